package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// Refresh re-reads every device and the CPU, handles any health events
// already pending (unless Run's watcher is handling them), tries recovery
// probes that are due, and publishes a new snapshot. A device that fails is
// marked in its health; the error is for failures that left the whole
// snapshot stale (a hung backend, a failed device count).
//
// Events are handled after the devices are read: an event names a GPU, and
// only the readings say which MIG instances it has. The first snapshot is
// published before any event, so that faults already pending at Open show,
// and are logged, as changes from the node as read.
func (inv *Inventory) Refresh(ctx context.Context) error {
	inv.refreshMu.Lock()
	defer inv.refreshMu.Unlock()
	if inv.isClosed() {
		return ErrClosed
	}
	var firstErr error
	if inv.backend != nil {
		firstErr = inv.readGPUs(ctx)
	}
	inv.readCPU()
	if inv.snap.Load() == nil {
		inv.publish()
	}
	if inv.backend != nil && !inv.watching.Load() {
		inv.drainEvents(ctx)
	}
	if inv.backend != nil && firstErr == nil {
		inv.probeRecoveries(ctx)
	}
	inv.publish()
	return firstErr
}

// readCPU re-reads the CPU device; a failure is logged when it changes.
func (inv *Inventory) readCPU() {
	cpu, err := inv.cpu.Read()
	inv.mu.Lock()
	if err != nil {
		if inv.cpuErr != err.Error() {
			inv.log.Warn("cannot read CPU memory or cgroup limits", slog.Any("err", err))
		}
		inv.cpuErr = err.Error()
	} else {
		inv.cpuErr = ""
	}
	inv.cpuDev = cpu
	inv.mu.Unlock()
}

// drainEvents handles the events already waiting, without blocking.
func (inv *Inventory) drainEvents(ctx context.Context) {
	for range 1024 {
		var ev RawEvent
		err := inv.wd.do(ctx, "poll events", 0, func() (err error) { ev, err = inv.backend.WaitEvent(ctx, 0); return err })
		if err != nil {
			if !errors.Is(err, ErrTimeout) {
				inv.noteWaitError(err)
			}
			return
		}
		inv.handleEvent(ev)
	}
}

// readGPUs queries every GPU (a lost one only every ProbeInterval) and
// records the readings; a GPU whose query fails keeps its last reading and
// is marked unknown or lost. Called with refreshMu held.
func (inv *Inventory) readGPUs(ctx context.Context) error {
	var n int
	err := inv.wd.do(ctx, "device count", 0, func() (err error) { n, err = inv.backend.Count(); return err })
	if err != nil {
		inv.health.callFailed(err)
		return fmt.Errorf("device: count GPUs: %w", err)
	}
	inv.health.callAnswered()
	inv.mu.Lock()
	prev := inv.readings
	inv.mu.Unlock()
	prevByIndex := map[int][]Device{}
	for _, d := range prev {
		prevByIndex[d.Index] = append(prevByIndex[d.Index], d)
	}
	now := inv.opts.Clock.Now()
	var readings []Device
	for i := range n {
		old := prevByIndex[i]
		// A lost GPU is only re-read every ProbeInterval.
		if len(old) > 0 && inv.health.state(old[0].UUID) == HealthLost && now.Sub(inv.queriedAt[i]) < inv.opts.ProbeInterval {
			readings = append(readings, old...)
			continue
		}
		var devs []Device
		err := inv.wd.do(ctx, fmt.Sprintf("query GPU %d", i), 0, func() (err error) { devs, err = inv.backend.Query(i); return err })
		inv.queriedAt[i] = now
		switch {
		case err == nil:
			readings = append(readings, devs...)
		case errors.Is(err, ErrStalled) || ctx.Err() != nil:
			inv.health.callFailed(err)
			// Keep what we had for the rest; the snapshot says unknown.
			for j := i; j < n; j++ {
				readings = append(readings, prevByIndex[j]...)
			}
			inv.setReadings(readings)
			return fmt.Errorf("device: %w", err)
		default:
			if len(old) == 0 {
				old = []Device{{Kind: KindGPU, Index: i, UUID: fmt.Sprintf("GPU-unknown-%d", i), Name: "unknown GPU", CUDAOrdinal: -1}}
			}
			readings = append(readings, old...)
			h := Health{State: HealthUnknown, Reason: fmt.Sprintf("NVML query failed: %v", err), Action: "place nothing new here; keep existing work"}
			if errors.Is(err, ErrGPULost) {
				h = healthLost
			}
			uuids := make([]string, len(old))
			for j, d := range old {
				uuids[j] = d.UUID
			}
			inv.health.fault(h, uuids...)
		}
	}
	inv.setReadings(readings)
	return nil
}

func (inv *Inventory) setReadings(r []Device) {
	inv.mu.Lock()
	inv.readings = r
	inv.mu.Unlock()
}

// handleEvent records one backend event and publishes the result.
func (inv *Inventory) handleEvent(ev RawEvent) {
	inv.mu.Lock()
	targets := eventTargets(ev, inv.readings)
	inv.mu.Unlock()
	if ev.Type == RawLost && len(targets) == 0 {
		// NVML did not say which GPU: re-read them all now.
		inv.requestRefresh()
		return
	}
	inv.health.event(ev, targets)
	inv.publish()
}

// eventTargets maps an event to the UUIDs of the devices it concerns: a MIG
// instance when the event names a GPU and compute instance, else the GPU and
// all its instances.
func eventTargets(ev RawEvent, readings []Device) []string {
	if ev.UUID == "" {
		return nil
	}
	if ev.GPUInstanceID != NoInstance {
		for _, d := range readings {
			if d.MIG != nil && d.MIG.ParentUUID == ev.UUID && d.MIG.GPUInstanceID == ev.GPUInstanceID &&
				(ev.ComputeInstanceID == NoInstance || d.MIG.ComputeInstanceID == ev.ComputeInstanceID) {
				return []string{d.UUID}
			}
		}
	}
	out := []string{ev.UUID}
	for _, d := range readings {
		if d.MIG != nil && d.MIG.ParentUUID == ev.UUID {
			out = append(out, d.UUID)
		}
	}
	return out
}

// probeRecoveries tries to bring back devices whose quiet period is over:
// the backend's probe, then Options.Probe, must pass.
func (inv *Inventory) probeRecoveries(ctx context.Context) {
	inv.mu.Lock()
	readings := inv.readings
	inv.mu.Unlock()
	due, at := inv.health.dueForProbe(readings)
	for _, d := range due {
		err := inv.wd.do(ctx, "probe "+d.UUID, 0, func() error { return inv.backend.Probe(d.UUID) })
		if err == nil && inv.opts.Probe != nil {
			err = inv.opts.Probe(ctx, d)
		}
		inv.health.probed(d.UUID, at, err)
	}
}
