// Package runtime is where hardware and kernels meet: it places loaded
// kernels on devices against free memory (runtime/placement), admits
// requests with bounded concurrency and a circuit breaker per kernel
// (runtime/admission), runs them on an executor, keeps Esper's seeds and
// their state machine, and computes HealthSignals from what kernels really
// output (runtime/health) for the bus.
//
// # Placement and execution
//
// Every loaded kernel has a placement: the device the placement policy
// chose for it, with a reservation in the ledger. executorFor routes each
// placement to an Executor. The only executor built in is the CPU's
// (package kernels' Kernel.Run), so a kernel placed on a GPU executes on
// the CPU; every response, view, log line and metric says so (placed on
// cuda:1, executed on cpu, because no GPU backend is built in). A GPU
// backend is one new Executor that executorFor returns for the placements
// it serves.
//
// # Layers and seeds
//
// HealthSignal.layer_id is an integer while commands name layers by
// layer_name. The host gives each layer name it registers the next free
// integer, starting at 0, in registration order, and keeps the mapping for
// the life of the state directory (it is saved with the rest of the state),
// so a controller maps signals back to layers with GET /v1/layers. A kernel
// served directly (not through load_kernel) stands as a seed of its own:
// layer name = kernel name, seed index 0.
//
// # Health signals
//
// Each seed with a kernel has a health.Window. Every SignalInterval the
// host turns each window that saw calls into a HealthSignal (see package
// health for the definitions), validates it against the contract, keeps it
// as the seed's latest signal and publishes it as an OonaMessage on
// telemetry.seed.health with sender_id "kasmina-host.<host id>" and trace_id
// "<layer name>/<seed index>/<kernel>", the payload being exactly the
// HealthSignal. chunk_id counts the signals emitted for the seed.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/kernels/cache"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/placement"
	"github.com/prometheus/client_golang/prometheus"
)

// Sentinels for errors.Is. Every error a Host method returns carries a
// failure class (see classify.go); a sentinel matches every error of its
// class, whichever cause made it, so errors.Is(err, ErrNotFound) is
// failure.Is(err, failure.NotFound). New code returns failure.Errorf
// rather than wrapping a sentinel, whose phrase would prefix the message.
var (
	// ErrNotFound: no kernel, seed or artifact by that name (class NotFound).
	ErrNotFound = failure.NewSentinel(failure.NotFound, "not found")
	// ErrBadInput: the request is wrong: a tensor that does not fit the
	// kernel, a name, a reference (class BadInput).
	ErrBadInput = failure.NewSentinel(failure.BadInput, "bad input")
	// ErrRefused: the kernel cannot be loaded or executed here: a
	// reference policy refuses, a non-executable target, no placement, an
	// illegal seed transition (class Refused).
	ErrRefused = failure.NewSentinel(failure.Refused, "kernel refused")
	// ErrQueueFull: the executor's queue is full (class QueueFull).
	ErrQueueFull = admission.ErrQueueFull
	// ErrUnavailable: not now: the kernel's circuit breaker is open or it
	// is being unloaded, the artifact or Urza cannot be reached, the state
	// cannot be saved (class Unavailable).
	ErrUnavailable = failure.NewSentinel(failure.Unavailable, "kernel unavailable")
	// ErrRuntime: the executor failed while running the kernel (class
	// Internal).
	ErrRuntime = failure.NewSentinel(failure.Internal, "runtime failure")
	// ErrIllegal: a seed transition the contract's state machine forbids;
	// such errors also have class Refused.
	ErrIllegal = contracts.ErrIllegalTransition
)

// DefaultMaxOutputBytes is Config.MaxOutputBytes's default: 64 MiB, the
// size of the largest request body (oip.DefaultMaxBodyBytes), so that a
// request's answer is bounded like its question.
const DefaultMaxOutputBytes = 64 << 20

// Inventory is what the runtime needs from the device inventory.
type Inventory interface {
	Snapshot() device.Snapshot
	Subscribe() (<-chan device.Event, func())
}

// Publisher takes messages for the bus without blocking.
type Publisher interface {
	Publish(msg contracts.OonaMessage) error
}

// healthSignalPublisher is a Publisher's optional fast path for health
// signals (oona's buses have it): the signal is encoded straight from the
// struct, as the message NewOonaMessage(senderID, traceID,
// TopicTelemetrySeedHealth, <its fields>) would be.
type healthSignalPublisher interface {
	PublishHealthSignal(senderID, traceID string, sig contracts.HealthSignal) error
}

// Config configures a Host. Zero values take the defaults documented on
// each field.
type Config struct {
	// HostID names this host in sender_id (default: the hostname).
	HostID string
	// Placement holds the policy and headroom.
	Placement placement.Options
	// Fallback is the default CPU fallback policy for kernels that list only
	// GPUs (default degraded).
	Fallback placement.Fallback
	// PlacementBatch is the batch size memory estimates are made for
	// (default 32, the contract's baseline).
	PlacementBatch int
	// Concurrency is how many requests run at once on the CPU executor
	// (default GOMAXPROCS); QueueDepth how many more may wait (default 256).
	Concurrency, QueueDepth int
	// RequestTimeout bounds a request that has no deadline (default 30 s).
	RequestTimeout time.Duration
	// BreakerThreshold consecutive runtime failures open a kernel's breaker
	// (default 5; negative disables); BreakerCooldown later one probe is
	// let through (default 10 s).
	BreakerThreshold int
	BreakerCooldown  time.Duration
	// SignalInterval is the health signal cadence (default 1 s).
	SignalInterval time.Duration
	// MaxBatch bounds the batch dimension of one request (default 4096).
	MaxBatch int
	// MaxOutputBytes bounds what one request may need for its output and
	// intermediate activations, computed from the kernel's module graph
	// for its batch before anything is allocated (default 64 MiB; negative:
	// no limit). A request over it is refused with failure.TooLarge, and
	// each kernel's max batch is lowered to what fits.
	MaxOutputBytes int64
	// GraftingRamp is how long a grafting seed's alpha takes to ramp from
	// its value when grafting starts (or when set_alpha last set it) to 1
	// (default 30 s; negative: alpha changes only by command).
	GraftingRamp time.Duration
	// MaxArtifactBytes caps a kernel file read from the repository
	// (default 256 MiB, as the artifact sources cap fetches).
	MaxArtifactBytes int64
	// CacheBytes bounds the cache of parsed kernels (default 1 GiB). Loaded
	// kernels are pinned; unloaded ones stay cached until evicted, so a
	// reload of the same bytes is instant.
	CacheBytes int64
	// Logger receives the host's logs (default: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) defaults() {
	if c.HostID == "" {
		c.HostID = "kasmina"
	}
	if c.PlacementBatch <= 0 {
		c.PlacementBatch = 32
	}
	if c.Concurrency <= 0 {
		c.Concurrency = goruntime.GOMAXPROCS(0)
	}
	if c.QueueDepth <= 0 {
		c.QueueDepth = 256
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.BreakerThreshold == 0 {
		c.BreakerThreshold = 5
	}
	if c.BreakerCooldown <= 0 {
		c.BreakerCooldown = 10 * time.Second
	}
	if c.SignalInterval <= 0 {
		c.SignalInterval = time.Second
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 4096
	}
	if c.MaxOutputBytes == 0 {
		c.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if c.GraftingRamp == 0 {
		c.GraftingRamp = 30 * time.Second
	}
	if c.MaxArtifactBytes <= 0 {
		c.MaxArtifactBytes = 256 << 20
	}
	if c.CacheBytes <= 0 {
		c.CacheBytes = 1 << 30
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Host is the node's runtime. Create it with New, start its loops with Run.
type Host struct {
	cfg     Config
	log     *slog.Logger
	inv     Inventory
	pub     Publisher
	planner *placement.Planner
	ledger  *placement.Ledger
	// admit bounds the requests running on the CPU executor at once.
	admit   *admission.Limiter
	metrics *metrics
	fetch   Fetcher
	resolve Resolver
	cache   *cache.Cache[*parsed]
	// artifacts keeps loaded kernels' bytes for restarts (may be nil).
	artifacts ArtifactStore

	// book holds the layers and their seeds (self-locking).
	book *layerBook

	mu      sync.RWMutex
	kernels map[string]*loaded // by model name
	failed  map[string]string  // model name → load error, for the repository index

	// repo is where LoadModel reads kernels; repoIndex maps names to paths.
	repo      *Repository
	repoIndex map[string]string
	started   atomic.Bool

	// failedOrder lists failed's names oldest first, to evict the oldest
	// past maxFailedLoads (guarded by mu).
	failedOrder []string

	epoch atomic.Int64
	// onChange, when set, is called after every change worth persisting;
	// changeMu serialises changes with their call (it is taken before mu).
	onChange    func() error
	changeMu    sync.Mutex
	readyChecks []readyCheck
	// emitMu makes one signal emission at a time.
	emitMu sync.Mutex
}

// New returns a host. reg may be nil (no metrics registered); pub may be
// nil (signals are only kept, not published).
func New(cfg Config, inv Inventory, pub Publisher, reg prometheus.Registerer) (*Host, error) {
	cfg.defaults()
	if inv == nil {
		return nil, errors.New("runtime: an inventory is required")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("runtime: registering metrics: %w", err)
	}
	kc, err := cache.New[*parsed](cfg.CacheBytes)
	if err != nil {
		return nil, fmt.Errorf("runtime: kernel cache: %w", err)
	}
	if reg != nil {
		if err := kc.Register(reg, nil); err != nil {
			return nil, fmt.Errorf("runtime: registering cache metrics: %w", err)
		}
	}
	h := &Host{
		cfg:       cfg,
		log:       cfg.Logger,
		inv:       inv,
		pub:       pub,
		planner:   placement.NewPlanner(cfg.Placement),
		ledger:    placement.NewLedger(),
		admit:     admission.NewLimiter(cfg.Concurrency, cfg.QueueDepth),
		metrics:   m,
		kernels:   make(map[string]*loaded),
		failed:    make(map[string]string),
		book:      newLayerBook(),
		cache:     kc,
		repoIndex: make(map[string]string),
	}
	m.pending = h.admit
	if reg != nil {
		if err := reg.Register(breakerCollector{h}); err != nil {
			return nil, fmt.Errorf("runtime: registering breaker metrics: %w", err)
		}
	}
	return h, nil
}

// SetFetcher sets where artifact references (paths, URLs, Urza ids) are
// resolved. Without one, only artifacts given as bytes can be loaded.
func (h *Host) SetFetcher(f Fetcher) { h.fetch = f }

// OnChange registers fn, called after every change of loaded kernels,
// seeds, layers or placements (the daemon saves its state there). It is
// called with the host's change lock held, so changes reach it one at a
// time in the order they were made, and it may read the host (State). An
// error from fn refuses the change: Load, Unload, SetSeedState, SetAlpha
// and RegisterLayer undo what they changed and return an error of class
// Unavailable naming fn's error, so nothing is acknowledged that was not
// saved. A re-placement (Replace) cannot be undone; its save error is
// logged.
func (h *Host) OnChange(fn func() error) {
	h.mu.Lock()
	h.onChange = fn
	h.mu.Unlock()
}

// HoldChanges runs fn while no change can be made, so that what fn reads
// of the host (State) is not a change half made: a state store writes the
// state this way outside a change (a retry, shutdown).
func (h *Host) HoldChanges(fn func() error) error {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	return fn()
}

// saveChange calls the change hook; the caller holds changeMu.
func (h *Host) saveChange() error {
	h.mu.RLock()
	fn := h.onChange
	h.mu.RUnlock()
	if fn == nil {
		return nil
	}
	if err := fn(); err != nil {
		return failure.Errorf(failure.Unavailable, "the change was undone because the state could not be saved: %w", err)
	}
	return nil
}

// AddReadyCheck adds a condition to readiness: while fn returns an error,
// Ready reports the host not ready, naming what and the error (the daemon
// checks its state store this way).
func (h *Host) AddReadyCheck(what string, fn func() error) {
	h.mu.Lock()
	h.readyChecks = append(h.readyChecks, readyCheck{what, fn})
	h.mu.Unlock()
}

// readyCheck is one AddReadyCheck condition.
type readyCheck struct {
	what string
	fn   func() error
}

// notReady returns the first failing ready check's reason, or "".
func (h *Host) notReady() string {
	h.mu.RLock()
	checks := h.readyChecks
	h.mu.RUnlock()
	for _, c := range checks {
		if err := c.fn(); err != nil {
			return c.what + ": " + err.Error()
		}
	}
	return ""
}

// Config returns the host's effective configuration.
func (h *Host) Config() Config { return h.cfg }

// SetEpoch records the training epoch reported on system.events.epoch.
func (h *Host) SetEpoch(epoch int64) {
	if epoch >= 0 {
		h.epoch.Store(epoch)
	}
}

// Epoch returns the latest training epoch.
func (h *Host) Epoch() int64 { return h.epoch.Load() }

// Run runs the host's loops until ctx ends: re-placement on device health
// changes and memory pressure, and health signal emission.
func (h *Host) Run(ctx context.Context) error {
	events, cancel := h.inv.Subscribe()
	defer cancel()
	tick := time.NewTicker(h.cfg.SignalInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			h.EmitSignals() // the last window is not lost on shutdown
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			h.log.Info("device health changed", slog.String("uuid", ev.Device.UUID),
				slog.String("from", string(ev.Previous.State)), slog.String("to", string(ev.Device.Health.State)),
				slog.String("reason", ev.Device.Health.Reason))
			h.Replace()
		case <-tick.C:
			h.Replace()
			h.EmitSignals()
		}
	}
}

// devices converts the inventory's snapshot into placement candidates:
// visible GPUs and MIG instances that run work, named by their CUDA
// ordinal (placement.DeviceName), and the CPU.
func devices(s device.Snapshot) []placement.Device {
	out := make([]placement.Device, 0, len(s.Devices))
	for _, d := range s.Devices {
		if !d.Visible {
			continue
		}
		pd := placement.Device{
			UUID:         d.UUID,
			Healthy:      d.Healthy,
			HealthReason: d.Health.Reason,
			FreeMiB:      float64(d.MemoryFreeBytes) / (1 << 20),
			TotalMiB:     float64(d.MemoryTotalBytes) / (1 << 20),
		}
		// Names follow placement's one contract (placement.DeviceName):
		// cuda:<CUDA ordinal> for a GPU and a MIG instance alike.
		switch d.Kind {
		case device.KindCPU:
			pd.Name, pd.Kind, pd.UUID = placement.CPUName, placement.KindCPU, ""
		default:
			if d.CUDAOrdinal < 0 {
				continue // not visible to CUDA, or a MIG-enabled GPU: no work runs on it
			}
			pd.Name, pd.Ordinal, pd.Kind = placement.DeviceName(d.CUDAOrdinal), d.CUDAOrdinal, placement.KindGPU
			if d.Kind == device.KindMIG {
				pd.Kind = placement.KindMIG
			}
			pd.MIGEnabled = d.MIGEnabled
		}
		if pd.HealthReason == "" && !pd.Healthy {
			pd.HealthReason = string(d.Health.State)
		}
		out = append(out, pd)
	}
	return out
}
