package device

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultRefreshInterval = 2 * time.Second
	DefaultEventWait       = 5 * time.Second
	DefaultWatchdogTimeout = 10 * time.Second
	DefaultQuietPeriod     = 5 * time.Minute
	DefaultProbeInterval   = 30 * time.Second
)

// Options configure Open. The zero value opens the real NVML (CPU-only when
// it is missing) with the defaults above.
type Options struct {
	// Simulate selects a simulated node instead of NVML: "dgxa100",
	// "dgxa100-mig" or the path of a JSON file (see SIMULATE.md).
	Simulate string
	// Backend, when set, is used instead of NVML or Simulate (tests).
	Backend Backend
	// RequireGPU makes Open fail with ErrNoGPU when NVML is missing or
	// reports no GPU, instead of running CPU-only.
	RequireGPU bool

	// RefreshInterval is how often Run re-reads every device.
	RefreshInterval time.Duration
	// EventWait bounds each wait for an NVML health event.
	EventWait time.Duration
	// WatchdogTimeout is how long a backend call may take (beyond
	// EventWait for event waits) before the inventory stops waiting for it
	// and reports the devices' health as unknown.
	WatchdogTimeout time.Duration
	// QuietPeriod is how long a faulty device must go without a new fault
	// before a probe may declare it healthy again.
	QuietPeriod time.Duration
	// ProbeInterval spaces out recovery probes and the re-reads of lost
	// devices.
	ProbeInterval time.Duration
	// Probe, when set, runs after the backend's own probe before a device is
	// declared recovered; a future GPU executor can run a real kernel here.
	Probe func(ctx context.Context, d Device) error

	// Logger receives the inventory's logs; nil discards them.
	Logger *slog.Logger
	// LookupEnv reads CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES,
	// KASMINA_DISABLE_XIDS and KASMINA_ENABLE_XIDS; nil means os.LookupEnv.
	// It has LookupEnv's signature because an empty CUDA_VISIBLE_DEVICES
	// (no devices) differs from an unset one (all devices).
	LookupEnv func(string) (string, bool)
	// Clock drives the simulator's fault timeline and health hysteresis;
	// nil means the system clock.
	Clock Clock
	// HostFS is the filesystem root the CPU device is read from; nil means
	// os.DirFS("/").
	HostFS fs.FS
	// NumCPU reports the CPUs the process may use; nil means runtime.NumCPU.
	NumCPU func() int
}

// Event tells a subscriber that a device's health changed.
type Event struct {
	// Device is the device as it is after the change.
	Device Device
	// Previous is the health it had before.
	Previous Health
	// At is when the change was published.
	At time.Time
}

// Inventory holds the latest Snapshot of the node's devices and keeps it up
// to date. Snapshot is cheap and safe for any number of concurrent readers;
// Refresh, Run, Subscribe and Close may be called from any goroutine.
type Inventory struct {
	opts    Options
	log     *slog.Logger
	backend Backend // nil when CPU-only
	sim     *Simulator
	source  string
	wd      *watchdog
	policy  XidPolicy
	cpu     CPUSource
	kick    chan struct{}

	snap     atomic.Pointer[Snapshot]
	watching atomic.Bool

	refreshMu sync.Mutex // one refresh at a time

	mu         sync.Mutex // guards everything below
	versions   Versions
	readings   []Device // last accelerator readings, snapshot order
	queriedAt  map[int]time.Time
	cpuDev     Device
	cpuErr     string
	tracks     map[string]*track
	stallCall  string
	stallWatch string
	stallSince time.Time
	warnings   []string // fixed at open (Xid policy)
	visWarn    []string
	subs       map[*subscriber]struct{}
	closed     bool
}

// track is one device's health history.
type track struct {
	base      Health
	lastFault time.Time
	lastProbe time.Time
	xids      map[uint64]uint64
}

// Open starts an inventory: it initialises the backend (NVML, a simulator, or
// none when the NVML library is missing), reads every device once and
// returns. Call Run to keep it fresh and Close to release NVML.
func Open(ctx context.Context, opts Options) (*Inventory, error) {
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = DefaultRefreshInterval
	}
	if opts.EventWait <= 0 {
		opts.EventWait = DefaultEventWait
	}
	if opts.WatchdogTimeout <= 0 {
		opts.WatchdogTimeout = DefaultWatchdogTimeout
	}
	if opts.QuietPeriod <= 0 {
		opts.QuietPeriod = DefaultQuietPeriod
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = DefaultProbeInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.HostFS == nil {
		opts.HostFS = os.DirFS("/")
	}
	if opts.NumCPU == nil {
		opts.NumCPU = runtime.NumCPU
	}
	inv := &Inventory{
		opts:      opts,
		log:       opts.Logger,
		wd:        &watchdog{timeout: opts.WatchdogTimeout},
		cpu:       CPUSource{Root: opts.HostFS, NumCPU: opts.NumCPU},
		kick:      make(chan struct{}, 1),
		queriedAt: map[int]time.Time{},
		tracks:    map[string]*track{},
		subs:      map[*subscriber]struct{}{},
	}
	switch {
	case opts.Backend != nil && opts.Simulate != "":
		return nil, errors.New("device: Options.Backend and Options.Simulate are both set; choose one")
	case opts.Backend != nil:
		inv.backend = opts.Backend
	case opts.Simulate != "":
		sim, err := OpenSimulator(opts.Simulate, opts.Clock)
		if err != nil {
			return nil, err
		}
		inv.backend = sim
	default:
		inv.backend = newNVMLBackend()
	}
	if sim, ok := inv.backend.(*Simulator); ok {
		inv.sim = sim
	}
	if err := inv.wd.do(ctx, "init", 0, inv.backend.Init); err != nil {
		if !errors.Is(err, ErrLibraryNotFound) {
			return nil, fmt.Errorf("device: open %s: %w", inv.backend.Source(), err)
		}
		// Nothing may call NVML after a failed Init: drop the backend.
		inv.log.Info("NVML library not found; running CPU-only", slog.Any("err", err),
			slog.String("hint", "on a GPU node, check that the binary was built with cgo, that the NVIDIA driver is installed and, in a container, that the NVIDIA Container Toolkit injects libnvidia-ml.so.1"))
		inv.backend, inv.sim = nil, nil
	}
	if inv.backend == nil && opts.RequireGPU {
		return nil, fmt.Errorf("device: %w: the NVML library is not available", ErrNoGPU)
	}
	inv.source = "cpu-only"
	if inv.backend != nil {
		inv.source = inv.backend.Source()
		var v Versions
		err := inv.wd.do(ctx, "versions", 0, func() (err error) { v, err = inv.backend.Versions(); return err })
		if err != nil {
			inv.log.Warn("cannot read driver versions", slog.Any("err", err))
		}
		inv.versions = v
	}
	disable, _ := opts.LookupEnv(EnvDisableXids)
	enable, _ := opts.LookupEnv(EnvEnableXids)
	policy, warnings := NewXidPolicy(disable, enable)
	if inv.backend != nil {
		warnings = append(warnings, inv.backend.Warnings()...)
	}
	inv.policy, inv.warnings = policy, warnings
	for _, w := range warnings {
		inv.log.Warn(w)
	}
	if err := inv.Refresh(ctx); err != nil {
		_ = inv.Close()
		return nil, err
	}
	snap := inv.Snapshot()
	if opts.RequireGPU && len(snap.GPUs()) == 0 {
		_ = inv.Close()
		return nil, fmt.Errorf("device: %w: %s shows no visible GPU", ErrNoGPU, inv.source)
	}
	labels := make([]string, 0, len(snap.Devices))
	for _, d := range snap.Visible() {
		labels = append(labels, d.Label()+"="+d.UUID)
	}
	inv.log.Info("device inventory open", slog.String("source", inv.source), slog.String("driver", inv.versions.Driver),
		slog.Int("gpus", len(snap.GPUs())), slog.String("visible", strings.Join(labels, ",")))
	return inv, nil
}

// Snapshot returns the latest published snapshot. It takes no lock and does
// not touch the hardware.
func (inv *Inventory) Snapshot() Snapshot {
	if s := inv.snap.Load(); s != nil {
		return *s
	}
	return Snapshot{Source: inv.source}
}

// Source names where devices come from, as Snapshot.Source does.
func (inv *Inventory) Source() string { return inv.source }

// Simulator returns the simulator behind the inventory, or nil when it reads
// real hardware. Tests use it to inject faults.
func (inv *Inventory) Simulator() *Simulator { return inv.sim }

// XidPolicy returns the Xid policy in force.
func (inv *Inventory) XidPolicy() XidPolicy { return inv.policy }

// Refresh re-reads every device and the CPU, handles any health events
// already pending (unless Run's watcher is handling them), tries recovery
// probes that are due, and publishes a new snapshot. A device that fails is
// marked in its health; the error is for failures that left the whole
// snapshot stale (a hung backend, a failed device count).
func (inv *Inventory) Refresh(ctx context.Context) error {
	inv.refreshMu.Lock()
	defer inv.refreshMu.Unlock()
	inv.mu.Lock()
	closed := inv.closed
	inv.mu.Unlock()
	if closed {
		return ErrClosed
	}
	var firstErr error
	if inv.backend != nil {
		if !inv.watching.Load() {
			inv.drainEvents(ctx)
		}
		if err := inv.readGPUs(ctx); err != nil {
			firstErr = err
		}
	}
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
	if inv.backend != nil && firstErr == nil {
		inv.probeRecoveries(ctx)
	}
	inv.publish()
	return firstErr
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

func (inv *Inventory) readGPUs(ctx context.Context) error {
	var n int
	err := inv.wd.do(ctx, "device count", 0, func() (err error) { n, err = inv.backend.Count(); return err })
	if err != nil {
		inv.noteCallError(err)
		return fmt.Errorf("device: count GPUs: %w", err)
	}
	inv.clearCallStall()
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
		if len(old) > 0 && inv.stateOf(old[0].UUID) == HealthLost {
			inv.mu.Lock()
			last := inv.queriedAt[i]
			inv.mu.Unlock()
			if now.Sub(last) < inv.opts.ProbeInterval {
				readings = append(readings, old...)
				continue
			}
		}
		var devs []Device
		err := inv.wd.do(ctx, fmt.Sprintf("query GPU %d", i), 0, func() (err error) { devs, err = inv.backend.Query(i); return err })
		inv.mu.Lock()
		inv.queriedAt[i] = now
		inv.mu.Unlock()
		switch {
		case err == nil:
			readings = append(readings, devs...)
		case errors.Is(err, ErrStalled) || ctx.Err() != nil:
			inv.noteCallError(err)
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
				h = Health{State: HealthLost, Reason: "GPU has fallen off the bus (ERROR_GPU_IS_LOST)", Action: "move work off this GPU; reset it or reboot the node"}
			}
			inv.mu.Lock()
			for _, d := range old {
				inv.applyFaultLocked(d.UUID, h)
			}
			inv.mu.Unlock()
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

func (inv *Inventory) stateOf(uuid string) HealthState {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if t := inv.tracks[uuid]; t != nil {
		return t.base.State
	}
	return HealthHealthy
}

// trackLocked returns the device's track, creating a healthy one.
func (inv *Inventory) trackLocked(uuid string) *track {
	t := inv.tracks[uuid]
	if t == nil {
		t = &track{base: Health{State: HealthHealthy, Since: inv.opts.Clock.Now()}, xids: map[uint64]uint64{}}
		inv.tracks[uuid] = t
	}
	return t
}

// applyFaultLocked records a fault: the quiet period restarts, and the state
// moves to h unless the device is already in a worse state.
func (inv *Inventory) applyFaultLocked(uuid string, h Health) {
	t := inv.trackLocked(uuid)
	now := inv.opts.Clock.Now()
	t.lastFault = now
	if h.State.rank() < t.base.State.rank() {
		return
	}
	if h.State != t.base.State {
		h.Since = now
	} else {
		h.Since = t.base.Since
	}
	t.base = h
}

// handleEvent classifies one backend event and publishes the result.
func (inv *Inventory) handleEvent(ev RawEvent) {
	inv.mu.Lock()
	targets := inv.targetsLocked(ev)
	switch ev.Type {
	case RawXid:
		for _, u := range targets {
			inv.trackLocked(u).xids[ev.Xid]++
		}
		if inv.policy.Ignored(ev.Xid) {
			inv.log.Debug("application Xid ignored", slog.Uint64("xid", ev.Xid), slog.String("uuid", ev.UUID))
			break
		}
		h := ClassifyXid(ev.Xid)
		for _, u := range targets {
			inv.applyFaultLocked(u, h)
		}
	case RawDoubleBitECC:
		for _, u := range targets {
			inv.applyFaultLocked(u, Health{State: HealthUnhealthy, Reason: "uncorrectable (double-bit) ECC error", Action: "move work off this GPU and reset it"})
		}
	case RawLost:
		if len(targets) == 0 {
			// NVML did not say which GPU: re-read them all now.
			inv.mu.Unlock()
			inv.requestRefresh()
			return
		}
		for _, u := range targets {
			inv.applyFaultLocked(u, Health{State: HealthLost, Reason: "GPU has fallen off the bus (ERROR_GPU_IS_LOST)", Action: "move work off this GPU; reset it or reboot the node"})
		}
	}
	inv.mu.Unlock()
	inv.publish()
}

// targetsLocked maps an event to device UUIDs: a MIG instance when the event
// names a GPU and compute instance, else the GPU and all its instances.
func (inv *Inventory) targetsLocked(ev RawEvent) []string {
	if ev.UUID == "" {
		return nil
	}
	if ev.GPUInstanceID != NoInstance {
		for _, d := range inv.readings {
			if d.MIG != nil && d.MIG.ParentUUID == ev.UUID && d.MIG.GPUInstanceID == ev.GPUInstanceID &&
				(ev.ComputeInstanceID == NoInstance || d.MIG.ComputeInstanceID == ev.ComputeInstanceID) {
				return []string{d.UUID}
			}
		}
	}
	out := []string{ev.UUID}
	for _, d := range inv.readings {
		if d.MIG != nil && d.MIG.ParentUUID == ev.UUID {
			out = append(out, d.UUID)
		}
	}
	return out
}

// probeRecoveries tries to bring back devices whose quiet period is over.
func (inv *Inventory) probeRecoveries(ctx context.Context) {
	now := inv.opts.Clock.Now()
	type due struct {
		dev Device
		t   *track
	}
	var todo []due
	inv.mu.Lock()
	for _, d := range inv.readings {
		t := inv.tracks[d.UUID]
		if t == nil || t.base.State == HealthHealthy {
			continue
		}
		if now.Sub(t.lastFault) < inv.opts.QuietPeriod || now.Sub(t.lastProbe) < inv.opts.ProbeInterval && !t.lastProbe.IsZero() {
			continue
		}
		t.lastProbe = now
		todo = append(todo, due{d, t})
	}
	inv.mu.Unlock()
	for _, p := range todo {
		err := inv.wd.do(ctx, "probe "+p.dev.UUID, 0, func() error { return inv.backend.Probe(p.dev.UUID) })
		if err == nil && inv.opts.Probe != nil {
			err = inv.opts.Probe(ctx, p.dev)
		}
		inv.mu.Lock()
		if err != nil {
			inv.log.Info("device still faulty after its quiet period", slog.String("uuid", p.dev.UUID), slog.String("state", string(p.t.base.State)), slog.Any("probe", err))
		} else if p.t.lastFault.Before(now) || p.t.lastFault.Equal(now) {
			p.t.base = Health{State: HealthHealthy, Since: inv.opts.Clock.Now(),
				Reason: fmt.Sprintf("recovered: no fault for %s and the probe passed (was %s: %s)", inv.opts.QuietPeriod, p.t.base.State, p.t.base.Reason)}
		}
		inv.mu.Unlock()
	}
}

// noteCallError records a backend call that stalled or failed outright.
func (inv *Inventory) noteCallError(err error) {
	if !errors.Is(err, ErrStalled) {
		return
	}
	inv.mu.Lock()
	if inv.stallCall == "" {
		inv.stallSince = inv.opts.Clock.Now()
		inv.log.Error("NVML call hung; device health is unknown until it answers", slog.Any("err", err))
	}
	inv.stallCall = err.Error()
	inv.mu.Unlock()
}

func (inv *Inventory) clearCallStall() {
	inv.mu.Lock()
	if inv.stallCall != "" {
		inv.log.Info("NVML answers again")
	}
	inv.stallCall = ""
	inv.mu.Unlock()
}

// noteWaitError handles an event wait that failed with something other
// than a timeout.
func (inv *Inventory) noteWaitError(err error) {
	switch {
	case errors.Is(err, ErrStalled):
		inv.noteCallError(err)
	case errors.Is(err, ErrGPULost):
		inv.requestRefresh()
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	default:
		inv.mu.Lock()
		if inv.stallWatch == "" {
			inv.stallSince = inv.opts.Clock.Now()
			inv.log.Warn("health event watch failing; device health is unknown", slog.Any("err", err))
		}
		inv.stallWatch = "health event watch failing: " + err.Error()
		inv.mu.Unlock()
	}
}

func (inv *Inventory) requestRefresh() {
	select {
	case inv.kick <- struct{}{}:
	default:
	}
}

// effectiveLocked is a device's health as published: a stalled backend
// makes healthy and degraded devices unknown.
func (inv *Inventory) effectiveLocked(d Device) Health {
	h := Health{State: HealthHealthy}
	if t := inv.tracks[d.UUID]; t != nil {
		h = t.base
	}
	if d.Kind == KindCPU {
		return h
	}
	stall := inv.stallCall
	if stall == "" {
		stall = inv.stallWatch
	}
	if stall != "" && h.State.rank() < HealthUnknown.rank() {
		return Health{State: HealthUnknown, Reason: stall, Action: "place nothing new here; keep existing work", Since: inv.stallSince}
	}
	return h
}

// publish builds a snapshot from the current readings and health, swaps it
// in and tells subscribers of every health change.
func (inv *Inventory) publish() {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.closed {
		return
	}
	now := inv.opts.Clock.Now()
	devs := make([]Device, 0, len(inv.readings)+1)
	devs = append(devs, inv.readings...)
	devs = append(devs, inv.cpuDev)
	for i := range devs {
		d := &devs[i]
		if d.MIG != nil {
			info := *d.MIG
			d.MIG = &info
		}
		t := inv.trackLocked(d.UUID)
		d.Health = inv.effectiveLocked(*d)
		if d.Health.Since.IsZero() {
			d.Health.Since = t.base.Since
		}
		d.Healthy = d.Health.Healthy()
		d.XidCounts = nil
		if len(t.xids) > 0 {
			d.XidCounts = maps.Clone(t.xids)
		}
	}
	if inv.cpuErr != "" {
		c := &devs[len(devs)-1]
		c.Health = Health{State: HealthDegraded, Reason: "cannot read memory or cgroup limits: " + inv.cpuErr, Action: "check /proc and /sys/fs/cgroup", Since: c.Health.Since}
	}
	vis := ApplyVisibility(devs, inv.opts.LookupEnv)
	if !slices.Equal(vis, inv.visWarn) {
		for _, w := range vis {
			inv.log.Warn(w)
		}
		inv.visWarn = vis
	}
	snap := &Snapshot{
		Devices:           devs,
		DriverVersion:     inv.versions.Driver,
		CUDADriverVersion: inv.versions.CUDADriver,
		NVMLVersion:       inv.versions.NVML,
		TakenAt:           now,
		Source:            inv.source,
		Warnings:          append(slices.Clip(inv.warnings), vis...),
	}
	old := inv.snap.Swap(snap)
	if old == nil {
		return
	}
	for _, d := range devs {
		prev, ok := old.ByUUID(d.UUID)
		if !ok {
			prev.Health = Health{State: HealthHealthy}
		}
		if prev.Health.State == d.Health.State && prev.Health.Reason == d.Health.Reason {
			continue
		}
		inv.log.Info("device health changed", slog.String("device", d.Label()), slog.String("uuid", d.UUID),
			slog.String("from", string(prev.Health.State)), slog.String("to", string(d.Health.State)), slog.String("reason", d.Health.Reason))
		ev := Event{Device: d, Previous: prev.Health, At: now}
		for s := range inv.subs {
			s.push(ev)
		}
	}
}

// Run keeps the inventory fresh until ctx is done: it re-reads the devices
// every RefreshInterval (and at once when NVML reports a lost GPU), and a
// watcher goroutine waits for NVML health events. It returns nil when ctx
// is done and ErrClosed if the inventory is closed.
func (inv *Inventory) Run(ctx context.Context) error {
	inv.mu.Lock()
	closed := inv.closed
	inv.mu.Unlock()
	if closed {
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
			inv.mu.Lock()
			changed := inv.stallWatch != ""
			inv.stallWatch = ""
			inv.mu.Unlock()
			if err == nil {
				inv.handleEvent(ev)
			} else if changed {
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

// Subscribe returns a channel that receives every health change, in order,
// and a function that ends the subscription and closes the channel. A slow
// reader never blocks the inventory: changes queue for it.
func (inv *Inventory) Subscribe() (<-chan Event, func()) {
	s := &subscriber{signal: make(chan struct{}, 1), out: make(chan Event), done: make(chan struct{}), exited: make(chan struct{})}
	inv.mu.Lock()
	if inv.closed {
		inv.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	inv.subs[s] = struct{}{}
	inv.mu.Unlock()
	go s.pump()
	cancel := func() {
		inv.mu.Lock()
		delete(inv.subs, s)
		inv.mu.Unlock()
		s.stop()
	}
	return s.out, cancel
}

// Close stops the inventory: subscriptions end and NVML is shut down. It is
// safe to call more than once.
func (inv *Inventory) Close() error {
	inv.mu.Lock()
	if inv.closed {
		inv.mu.Unlock()
		return nil
	}
	inv.closed = true
	subs := make([]*subscriber, 0, len(inv.subs))
	for s := range inv.subs {
		subs = append(subs, s)
	}
	inv.subs = map[*subscriber]struct{}{}
	inv.mu.Unlock()
	for _, s := range subs {
		s.stop()
	}
	if inv.backend == nil {
		return nil
	}
	if err := inv.wd.do(context.Background(), "shutdown", 0, inv.backend.Shutdown); err != nil {
		return fmt.Errorf("device: shut down %s: %w", inv.source, err)
	}
	return nil
}

// subscriber queues events for one reader; its pump goroutine hands them
// over one at a time.
type subscriber struct {
	mu     sync.Mutex
	queue  []Event
	signal chan struct{}
	out    chan Event
	done   chan struct{}
	exited chan struct{}
	once   sync.Once
}

func (s *subscriber) push(ev Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

func (s *subscriber) pump() {
	defer close(s.exited)
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.mu.Unlock()
			select {
			case <-s.signal:
				continue
			case <-s.done:
				return
			}
		}
		ev := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		select {
		case s.out <- ev:
		case <-s.done:
			return
		}
	}
}

func (s *subscriber) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.exited
}
