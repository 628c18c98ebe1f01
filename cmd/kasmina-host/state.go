package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/statedir"
	"github.com/prometheus/client_golang/prometheus"
)

// openState opens --state-dir and reads its state file. A state file this
// build cannot use is returned as a *statedir.UnreadableError (serve exits
// 2 and leaves it alone) unless --state-move-aside is set, which renames
// it and starts fresh. found is false for a fresh start.
func openState(cfg *serveConfig, log *slog.Logger, reg prometheus.Registerer) (store *statedir.Store, st runtime.State, found bool, err error) {
	store, err = statedir.Open(cfg.stateDir, statedir.Options{Logger: log.With(slog.String("component", "state"))})
	if err != nil {
		return nil, st, false, fmt.Errorf("--state-dir: %w", err)
	}
	if err := store.Register(reg); err != nil {
		return nil, st, false, fmt.Errorf("registering state metrics: %w", err)
	}
	found, err = store.Read(&st, runtime.StateVersion)
	var unreadable *statedir.UnreadableError
	switch {
	case errors.As(err, &unreadable) && cfg.stateMoveAside:
		moved, merr := store.MoveAside()
		if merr != nil {
			return nil, st, false, errors.Join(err, merr)
		}
		log.Warn("state file unreadable: moved aside, starting fresh (--state-move-aside)",
			slog.String("err", err.Error()), slog.String("moved_to", moved))
		return store, runtime.State{}, false, nil
	case err != nil:
		return nil, st, false, err
	case !found:
		log.Info("no saved state: starting fresh", slog.String("state_dir", cfg.stateDir))
	}
	return store, st, found, nil
}

// restoreState brings back what the state file records.
func restoreState(ctx context.Context, log *slog.Logger, host *runtime.Host, st runtime.State) {
	n, err := host.Restore(ctx, st)
	if err != nil {
		log.Error("restoring state", slog.Any("err", err))
	}
	log.Info("state restored", slog.Int("kernels", n), slog.Int("of", len(st.Kernels)), slog.Int("seeds", len(st.Seeds)),
		slog.Time("saved_at", st.SavedAt))
}
