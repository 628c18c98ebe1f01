// Package runtime is where hardware and kernels meet: it places loaded
// kernels on devices against free memory (runtime/placement), admits
// requests with bounded concurrency and a circuit breaker per kernel
// (runtime/admission), runs them on an executor, keeps Esper's seeds and
// their state machine, and computes HealthSignals from what kernels really
// output (runtime/health) for the bus.
//
// # The Host
//
// New takes what the host works with (Deps: the device inventory, the
// bus, artifact sources, Urza, the kernel repository, the state store);
// Run starts it (the repository scan) and runs its loops. Its flows, each
// in its own file:
//
//	Load            resolve → fetch → parse → describe → place → register (load.go)
//	Model, Infer    the request path: one lookup, admission, the executor,
//	                the health window (infer.go)
//	Apply           every operation on a layer or a seed, from the bus's
//	                commands (commands.go) or a front end (seeds.go)
//	replan          re-placement on device health and memory pressure (replan.go)
//	emitSignals     health signals (signals.go)
//	State, Restore  the state saved and brought back (state.go)
//
// Every change is saved in the state store before it is acknowledged, or
// refused and undone. Errors carry a class of package failure, given once
// where the cause is known (classify.go).
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
// A layer is declared by its owner (DeclareLayer: PUT /v1/layers, the
// --layers file), by a command for an unknown layer with
// Config.AcceptAllLayers, or implicitly by a kernel loaded into it
// directly. Its id, the layer_id of its health signals, is the declared
// one, else LayerIDOf its name (FNV-1a): the same on every host, so that
// signals of different hosts never share an id for different layers. A
// layer has num_seeds slots; each slot holds one seed. Loading a kernel
// into a dormant seed germinates it; into a seed that holds one, swaps
// it (requests already running finish on the old kernel); unloading
// culls the seed, which stays in the slot's history, and leaves a fresh
// dormant seed. One artifact may serve any number of seeds: the parsed
// kernel is shared through the cache, each seed has its own reservation.
// A kernel served directly (not through a seed) stands as a seed of its
// own: layer name = kernel name, one slot.
//
// Every control operation goes through Apply and returns an Outcome, the
// same for the bus and the front ends; the seed operations publish it as
// an outcome event on telemetry.seed.health (outcome.go).
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
	"github.com/esper/kasmina-host/runtime/oona"
	"github.com/esper/kasmina-host/runtime/placement"
	"github.com/prometheus/client_golang/prometheus"
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

// Publisher takes messages for the bus without blocking: a new message
// on topic from senderID, its payload written by the payload itself (the
// runtime's are contracts.HealthSignal). It is the publishing half of
// Bus.
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
	// KeptForwards and KeptForwardBytes bound the layer forwards kept for
	// a later backward (keep_forward): past either, the oldest are
	// evicted (defaults 1024 and 256 MiB: the DaemonSet's memory holds
	// them beside four inference working sets). A kept forward holds its
	// seeds' tapes (the activations their backward reads) and expires
	// KeptForwardTTL after its forward (default 60 s).
	KeptForwards     int
	KeptForwardBytes int64
	KeptForwardTTL   time.Duration
	// AcceptAllLayers makes a command for a layer nobody declared declare
	// it (DefaultNumSeeds slots, declared by "command") instead of being
	// skipped: for a single host on the bus. With several hosts on one
	// bus each declares the layers it owns and skips the others'.
	AcceptAllLayers bool
	// RequireChecksum refuses a kernel id Urza resolves to a record with
	// no SHA-256 (instead of pinning the first bytes loaded for the id).
	RequireChecksum bool
	// Layers are declarations Run applies first, after a Restore and
	// before the repository scan and the bus (the --layers file). One the
	// host refuses is logged as an error; the others apply.
	Layers []DeclareLayer
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
	if c.KeptForwards <= 0 {
		c.KeptForwards = DefaultKeptForwards
	}
	if c.KeptForwardBytes <= 0 {
		c.KeptForwardBytes = DefaultKeptForwardBytes
	}
	if c.KeptForwardTTL <= 0 {
		c.KeptForwardTTL = DefaultKeptForwardTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Deps are what a Host works with. Inventory is required; the rest may be
// nil.
type Deps struct {
	// Inventory gives device snapshots and health events.
	Inventory Inventory
	// Bus publishes health signals and brings commands and epochs, which
	// Run consumes. Without one, signals are kept (the latest per seed)
	// but not published, and no command arrives.
	Bus Bus
	// Fetcher fetches artifacts by reference (paths, URLs). Without one,
	// only artifacts given as bytes can be loaded.
	Fetcher Fetcher
	// Resolver resolves bare kernel ids (load_kernel's artifact_id)
	// through Urza.
	Resolver Resolver
	// Repository is where the start-up scan (Run) and LoadModel read
	// kernels: the --kernels directory or the embedded examples.
	Repository *Repository
	// Store keeps the State and the loaded kernels' bytes across
	// restarts: every change is saved before it is acknowledged, and a
	// change that cannot be saved is refused and undone.
	Store StateStore
	// Registerer receives the host's metrics (none registered when nil).
	Registerer prometheus.Registerer
}

// Bus is what the host needs from the Oona bus: a publisher for its health
// signals, and consumers of control.kasmina.commands and
// system.events.epoch that Run starts once the host is ready.
type Bus interface {
	Publisher
	ConsumeCommands(ctx context.Context, h oona.CommandHandler) error
	ConsumeEpochs(ctx context.Context, fn oona.EpochFunc) error
}

// StateStore keeps the host's State and its kernels' bytes (statedir's
// Store is one). A store need not lock: the host calls Save with its
// change lock held.
type StateStore interface {
	ArtifactStore
	// Save writes doc, the host's State, before it returns; an error
	// makes the host refuse and undo the change doc records.
	Save(doc any) error
	// Err says why the store's last write failed, nil after a successful
	// one. While it fails the host is not ready, and Run writes the state
	// again every SignalInterval until a write succeeds.
	Err() error
}

// Host is the node's runtime. Create it with New, start it with Run.
type Host struct {
	cfg     Config
	log     *slog.Logger
	inv     Inventory
	bus     Bus
	pub     Publisher // bus's publishing half; nil without a bus
	planner *placement.Planner
	ledger  *placement.Ledger
	// admit bounds the requests running on the CPU executor at once.
	admit   *admission.Limiter
	metrics *metrics
	fetch   Fetcher
	resolve Resolver
	repo    *Repository
	store   StateStore
	cache   *cache.Cache[*parsed]

	// book holds the layers and their seeds (self-locking).
	book *layerBook
	// forwards keeps layer forwards for their backward (self-locking).
	forwards *forwardStore

	mu      sync.RWMutex
	kernels map[string]*loaded // by model name
	failed  map[string]string  // model name → load error, for the repository index
	// failedOrder lists failed's names oldest first, to evict the oldest
	// past maxFailedLoads.
	failedOrder []string
	// repoIndex maps the repository's kernel names to their paths.
	repoIndex map[string]string

	// pins holds the SHA-256 first loaded for each Urza id that came
	// without a checksum.
	pins pins

	started atomic.Bool
	epoch   atomic.Int64
	// loads numbers loads, for their reservations' keys.
	loads atomic.Uint64
	// changeMu serialises changes with their save (it is taken before mu),
	// so the store sees them one at a time, in the order they were made.
	changeMu sync.Mutex
	// restoring holds saves back while Restore runs: a state written then
	// would record a restore half done.
	restoring atomic.Bool
	// emitMu makes one signal emission at a time.
	emitMu sync.Mutex
}

// New returns a host working with deps.
func New(cfg Config, deps Deps) (*Host, error) {
	cfg.defaults()
	if deps.Inventory == nil {
		return nil, errors.New("runtime: an inventory is required")
	}
	reg := deps.Registerer
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
		inv:       deps.Inventory,
		bus:       deps.Bus,
		planner:   placement.NewPlanner(cfg.Placement),
		ledger:    placement.NewLedger(),
		admit:     admission.NewLimiter(cfg.Concurrency, cfg.QueueDepth),
		metrics:   m,
		fetch:     deps.Fetcher,
		resolve:   deps.Resolver,
		repo:      deps.Repository,
		store:     deps.Store,
		cache:     kc,
		book:      newLayerBook(),
		forwards:  newForwardStore(cfg.KeptForwards, cfg.KeptForwardBytes, cfg.KeptForwardTTL),
		kernels:   make(map[string]*loaded),
		failed:    make(map[string]string),
		repoIndex: make(map[string]string),
	}
	if deps.Bus != nil {
		h.pub = deps.Bus
	}
	m.pending = h.admit
	if reg != nil {
		if err := reg.Register(breakerCollector{h}); err != nil {
			return nil, fmt.Errorf("runtime: registering breaker metrics: %w", err)
		}
		if err := reg.Register(h.forwards); err != nil {
			return nil, fmt.Errorf("runtime: registering kept-forward metrics: %w", err)
		}
	}
	return h, nil
}

// Config returns the host's effective configuration.
func (h *Host) Config() Config { return h.cfg }

// Ready reports whether the node can serve: the start-up scan has
// finished and the state store (if any) writes. With the CPU executor
// always present, a loaded kernel can always be served somewhere; one
// kernel whose circuit breaker is open is that kernel's unreadiness (its
// view, its model readiness and kasmina_kernel_breaker_open), never the
// node's, which would take every other kernel on the node out of service.
func (h *Host) Ready() (bool, string) {
	if !h.started.Load() {
		return false, "loading the kernel repository"
	}
	if h.store != nil {
		if err := h.store.Err(); err != nil {
			return false, "state directory failing: " + err.Error()
		}
	}
	return true, ""
}

// Run starts the host and runs it until ctx ends. It applies
// Config.Layers, loads the repository's kernels (those a Restore brought back stay as they are),
// saves the state once, turns ready, and then runs the host's loops:
// re-placement on device health changes and memory pressure, health
// signal emission every SignalInterval, the bus's command and epoch
// consumers, and retries of a failing state store. When ctx ends it waits
// for the consumers, emits the last signals and saves the state.
func (h *Host) Run(ctx context.Context) error {
	for _, d := range h.cfg.Layers {
		o, err := h.Apply(ctx, d)
		if err != nil {
			h.log.Error("layer declaration refused", slog.String("layer", d.Layer), slog.String("declared_by", d.By.String()), slog.Any("err", err))
			continue
		}
		h.log.Info("layer declared", slog.String("layer", d.Layer), slog.Int("layer_id", o.LayerID), slog.String("declared_by", d.By.String()),
			slog.Bool("unchanged", o.Unchanged))
	}
	loaded, failed, err := h.loadRepository(ctx)
	if err != nil {
		h.log.Error("kernel repository", slog.Any("err", err))
	}
	if ctx.Err() != nil {
		return nil
	}
	// The restore may have repaired what it read (layer ids, alphas): the
	// state saved says what the host holds.
	if err := h.saveNow(); err != nil {
		h.log.Error("state not saved", slog.Any("err", err))
	}
	h.started.Store(true)
	h.log.Info("ready", slog.Int("kernels_loaded", loaded), slog.Int("kernels_failed", failed))

	var wg sync.WaitGroup
	if h.bus != nil {
		consume := func(loop string, fn func(context.Context) error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
					h.log.Error("loop stopped", slog.String("loop", loop), slog.Any("err", err))
				}
			}()
		}
		consume("commands", func(ctx context.Context) error { return h.bus.ConsumeCommands(ctx, commandHandler{h}) })
		consume("epochs", func(ctx context.Context) error {
			return h.bus.ConsumeEpochs(ctx, func(_ context.Context, ev oona.EpochEvent) { h.setEpoch(ev.Epoch) })
		})
	}
	events, cancel := h.inv.Subscribe()
	defer cancel()
	tick := time.NewTicker(h.cfg.SignalInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			h.emitSignals() // the last window is not lost on shutdown
			if err := h.saveNow(); err != nil {
				h.log.Error("state not saved at shutdown", slog.Any("err", err))
			}
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			h.replan()
		case <-tick.C:
			h.replan()
			h.emitSignals()
			h.forwards.sweep(h.cfg.Now())
			if h.store != nil && h.store.Err() != nil {
				_ = h.saveNow() // the store logs the outcome
			}
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

// setEpoch takes the epoch a system.events.epoch event announced and
// saves it with the state (a restart starts from it).
func (h *Host) setEpoch(epoch int64) {
	if epoch < 0 || h.epoch.Swap(epoch) == epoch {
		return
	}
	h.log.Info("epoch", slog.Int64("epoch", epoch))
	if err := h.saveNow(); err != nil {
		h.log.Error("epoch not saved", slog.Int64("epoch", epoch), slog.Any("err", err))
	}
}
