package device

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
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

// Inventory holds the latest Snapshot of the node's devices and keeps it up
// to date. Snapshot is cheap and safe for any number of concurrent readers;
// Refresh, Run, Subscribe and Close may be called from any goroutine.
//
// Its parts live in their own files: Open, Snapshot, publish and Close here;
// reading the hardware in refresh.go; health rules in health.go (healthBook);
// Run's loops in watch.go; subscriptions in subscribe.go.
type Inventory struct {
	// Fixed at Open.
	opts     Options
	log      *slog.Logger
	backend  Backend // nil when CPU-only
	sim      *Simulator
	source   string
	versions Versions
	warnings []string // the Xid policy's and the backend's
	wd       *watchdog
	cpu      CPUSource

	health   *healthBook
	subs     *subscriptions
	snap     atomic.Pointer[Snapshot]
	watching atomic.Bool   // Run's watcher handles events, so Refresh does not
	kick     chan struct{} // asks Run for a refresh now

	refreshMu sync.Mutex        // one refresh at a time; guards queriedAt
	queriedAt map[int]time.Time // when each GPU index was last queried

	mu       sync.Mutex // guards the fields below; held for a whole publish so events stay in order
	readings []Device   // last accelerator readings, snapshot order
	cpuDev   Device
	cpuErr   string
	visWarn  []string // the visibility warnings last logged
	closed   bool
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
		subs:      newSubscriptions(),
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
	inv.warnings = warnings
	inv.health = newHealthBook(opts.Clock, policy, opts.QuietPeriod, opts.ProbeInterval, inv.log)
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
func (inv *Inventory) XidPolicy() XidPolicy { return inv.health.policy }

// isClosed reports whether Close has been called.
func (inv *Inventory) isClosed() bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.closed
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
		if m := devs[i].MIG; m != nil {
			info := *m
			devs[i].MIG = &info
		}
	}
	inv.health.annotate(devs)
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
		inv.subs.push(Event{Device: d, Previous: prev.Health, At: now})
	}
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
	inv.mu.Unlock()
	inv.subs.close()
	if inv.backend == nil {
		return nil
	}
	if err := inv.wd.do(context.Background(), "shutdown", 0, inv.backend.Shutdown); err != nil {
		return fmt.Errorf("device: shut down %s: %w", inv.source, err)
	}
	return nil
}
