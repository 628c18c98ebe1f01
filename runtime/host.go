// Package runtime is where hardware and kernels meet: it places loaded
// kernels on devices against free memory (runtime/placement), dispatches
// requests to an executor with bounded concurrency (runtime/dispatch),
// keeps Esper's seeds and their state machine, computes HealthSignals from
// what kernels really output (runtime/health) and publishes them.
//
// # Placement and execution
//
// Every loaded kernel has a placement: the device the placement policy
// chose for it, with a reservation in the ledger. Execution goes to the
// backend of the placed device. The only backend built in today is the
// CPU executor (package kernels), so a kernel placed on a GPU runs through
// the CPU fallback path; every response, view and metric says so (placed on
// cuda:1, executed on cpu, because no GPU backend is built in). The
// Executor interface is where a GPU backend plugs in.
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
	"github.com/esper/kasmina-host/runtime/dispatch"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
	"github.com/esper/kasmina-host/runtime/placement"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors callers branch on. Each error the host returns wraps one of them.
var (
	// ErrNotFound: no kernel or seed by that name.
	ErrNotFound = failure.NewSentinel(failure.NotFound, "not found")
	// ErrBadInput: the request's tensor does not fit the kernel.
	ErrBadInput = failure.NewSentinel(failure.BadInput, "bad input")
	// ErrRefused: the kernel cannot be loaded or executed here (bad
	// artifact, checksum mismatch, non-executable target, no placement).
	ErrRefused = failure.NewSentinel(failure.Refused, "kernel refused")
	// ErrQueueFull: the executor's queue is full.
	ErrQueueFull = dispatch.ErrQueueFull
	// ErrUnavailable: the kernel's circuit breaker is open or it is being
	// unloaded.
	ErrUnavailable = failure.NewSentinel(failure.Unavailable, "kernel unavailable")
	// ErrRuntime: the executor failed while running the kernel.
	ErrRuntime = failure.NewSentinel(failure.Internal, "runtime failure")
	// ErrFetch: the artifact could not be fetched (transient for commands:
	// they stay pending and are retried).
	ErrFetch = failure.NewSentinel(failure.Unavailable, "artifact fetch failed")
	// ErrIllegal: a seed transition the contract's state machine forbids.
	ErrIllegal = contracts.ErrIllegalTransition
)

// Inventory is what the runtime needs from the device inventory.
type Inventory interface {
	Snapshot() device.Snapshot
	Subscribe() (<-chan device.Event, func())
}

// Publisher takes messages for the bus without blocking: a new message
// on topic from senderID, its payload written by the payload itself (the
// runtime's are contracts.HealthSignal).
type Publisher interface {
	PublishPayload(topic contracts.TopicName, senderID, traceID string, p oona.Payload) error
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
	cpu     *dispatch.Limiter
	metrics *metrics
	fetch   Fetcher
	resolve Resolver
	cache   *cache.Cache[*parsed]
	// artifacts keeps loaded kernels' bytes for restarts (may be nil).
	artifacts ArtifactStore

	mu      sync.RWMutex
	kernels map[string]*loaded // by model name
	failed  map[string]string  // model name → load error, for the repository index
	seeds   *seedRegistry
	// repo is where LoadModel reads kernels; repoIndex maps names to paths.
	repo      *Repository
	repoIndex map[string]string
	started   atomic.Bool

	epoch atomic.Int64
	// onChange, when set, is called after every change worth persisting.
	onChange func()
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
		cpu:       dispatch.NewLimiter(cfg.Concurrency, cfg.QueueDepth),
		metrics:   m,
		kernels:   make(map[string]*loaded),
		failed:    make(map[string]string),
		seeds:     newSeedRegistry(),
		cache:     kc,
		repoIndex: make(map[string]string),
	}
	m.pending = h.cpu
	return h, nil
}

// SetFetcher sets where artifact references (paths, URLs, Urza ids) are
// resolved. Without one, only artifacts given as bytes can be loaded.
func (h *Host) SetFetcher(f Fetcher) { h.fetch = f }

// OnChange registers a function called after every change of loaded
// kernels, seeds or placements (the daemon saves its state there).
func (h *Host) OnChange(fn func()) {
	h.mu.Lock()
	h.onChange = fn
	h.mu.Unlock()
}

func (h *Host) changed() {
	h.mu.RLock()
	fn := h.onChange
	h.mu.RUnlock()
	if fn != nil {
		fn()
	}
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
// ordinal, and the CPU.
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
		switch d.Kind {
		case device.KindCPU:
			pd.Name, pd.Kind, pd.UUID = "cpu", placement.KindCPU, ""
		case device.KindMIG:
			pd.Name, pd.Kind, pd.Index = fmt.Sprintf("cuda:%d", d.CUDAOrdinal), placement.KindMIG, d.CUDAOrdinal
		default:
			if d.CUDAOrdinal < 0 {
				continue
			}
			pd.Name, pd.Kind, pd.Index, pd.MIGEnabled = fmt.Sprintf("cuda:%d", d.CUDAOrdinal), placement.KindGPU, d.CUDAOrdinal, d.MIGEnabled
		}
		if pd.HealthReason == "" && !pd.Healthy {
			pd.HealthReason = string(d.Health.State)
		}
		out = append(out, pd)
	}
	return out
}
