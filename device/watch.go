package device

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Run keeps the inventory fresh until ctx is done: it re-reads the devices
// every RefreshInterval (and at once when NVML reports a lost GPU), and a
// watcher goroutine waits for NVML health events. It returns nil when ctx
// is done and ErrClosed if the inventory is closed.
func (inv *Inventory) Run(ctx context.Context) error {
	if inv.isClosed() {
		return ErrClosed
	}
	var wg sync.WaitGroup
	if inv.backend != nil && inv.watching.CompareAndSwap(false, true) {
		wg.Go(func() {
			defer inv.watching.Store(false)
			inv.watch(ctx)
		})
	}
	defer wg.Wait()
	ticker := time.NewTicker(inv.opts.RefreshInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case <-inv.kick:
		}
		if err := inv.Refresh(ctx); err != nil {
			if errors.Is(err, ErrClosed) {
				return ErrClosed
			}
			if ctx.Err() == nil {
				inv.log.Warn("device refresh failed", slog.Any("err", err))
			}
		}
	}
}

// watch waits for health events until ctx is done, backing off from 1 s to
// 30 s while the wait keeps failing.
func (inv *Inventory) watch(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		var ev RawEvent
		err := inv.wd.do(ctx, "wait for events", inv.opts.EventWait, func() (err error) {
			ev, err = inv.backend.WaitEvent(ctx, inv.opts.EventWait)
			return err
		})
		switch {
		case err == nil || errors.Is(err, ErrTimeout):
			backoff = time.Second
			wasFailing := inv.health.watchAnswered()
			if err == nil {
				inv.handleEvent(ev)
			} else if wasFailing {
				inv.publish()
			}
			continue
		case errors.Is(err, ErrClosed):
			return
		case errors.Is(err, ErrGPULost):
			inv.requestRefresh()
			continue
		}
		inv.noteWaitError(err)
		inv.publish()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// noteWaitError handles an event wait that failed with something other
// than a timeout.
func (inv *Inventory) noteWaitError(err error) {
	switch {
	case errors.Is(err, ErrStalled):
		inv.health.callFailed(err)
	case errors.Is(err, ErrGPULost):
		inv.requestRefresh()
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	default:
		inv.health.watchFailed(err)
	}
}

// requestRefresh asks Run for a refresh now; a request already pending
// covers this one.
func (inv *Inventory) requestRefresh() {
	select {
	case inv.kick <- struct{}{}:
	default:
	}
}
