package runtime

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

type seedKey struct {
	layer string
	idx   int
}

// seed is one seed the host knows, with what the contract's Seed does not
// hold. Guarded by Host.mu.
type seed struct {
	contracts.Seed
	kernel      string // "" when none attached
	alpha       float64
	alphaSetAt  time.Time
	transitions []Transition
	signals     int // signals emitted: the chunk_id of the next one
	latest      *contracts.HealthSignal
}

// Transition records one state change.
type Transition struct {
	At   time.Time           `json:"at"`
	From contracts.SeedState `json:"from"`
	To   contracts.SeedState `json:"to"`
	Why  string              `json:"why"`
}

// seedRegistry holds seeds keyed by layer name and seed index, and the
// stable layer name → layer id mapping. Callers hold Host.mu.
type seedRegistry struct {
	layers map[string]int
	next   int
	seeds  map[seedKey]*seed
}

func newSeedRegistry() *seedRegistry {
	return &seedRegistry{layers: make(map[string]int), seeds: make(map[seedKey]*seed)}
}

// registerLayer returns the layer's id, giving a new layer the next one.
func (r *seedRegistry) registerLayer(name string) int {
	if id, ok := r.layers[name]; ok {
		return id
	}
	id := r.next
	r.layers[name] = id
	r.next++
	return id
}

func (r *seedRegistry) layerID(name string) int {
	if id, ok := r.layers[name]; ok {
		return id
	}
	return -1
}

func (r *seedRegistry) get(k seedKey, now time.Time) *seed {
	if s, ok := r.seeds[k]; ok {
		return s
	}
	s := &seed{Seed: contracts.NewSeed(r.registerLayer(k.layer), k.idx)}
	s.CreatedAt, s.UpdatedAt = now, now
	r.seeds[k] = s
	return s
}

// attach puts kernel into the seed, germinating a dormant seed. A seed in a
// terminal state (fossilized, culled) takes no kernel; a seed holding another
// kernel must be unloaded first.
func (r *seedRegistry) attach(layer string, idx int, kernel, blueprintID string, now time.Time) error {
	if idx < 0 {
		return failure.Errorf(failure.BadInput, "seed_idx %d is negative", idx)
	}
	k := seedKey{layer, idx}
	if s, ok := r.seeds[k]; ok {
		if s.kernel != "" && s.kernel != kernel {
			return failure.Errorf(failure.Conflict, "seed %s/%d already holds kernel %q; unload it first", layer, idx, s.kernel)
		}
		if s.State == contracts.SeedFossilized || s.State == contracts.SeedCulled {
			return failure.Errorf(failure.Refused, "seed %s/%d is %s and takes no kernel", layer, idx, s.State)
		}
	}
	s := r.get(k, now)
	if s.State == contracts.SeedDormant {
		if err := s.move(k, contracts.SeedGerminated, "kernel "+kernel+" loaded", now); err != nil {
			return err
		}
	}
	s.kernel = kernel
	if blueprintID != "" {
		b := blueprintID
		s.BlueprintID = &b
	}
	return nil
}

// detach takes kernel out of its seed. A live seed losing its kernel is
// culled, as Esper's Kasmina does on unload. A directly served kernel's own
// seed (layer = kernel name, index 0) goes with it instead, so that the
// kernel can be loaded again (a culled seed takes no kernel); its layer id
// stays registered.
func (r *seedRegistry) detach(k seedKey, kernel string, now time.Time) {
	s, ok := r.seeds[k]
	if !ok || s.kernel != kernel {
		return
	}
	if k.layer == kernel && k.idx == 0 {
		delete(r.seeds, k)
		return
	}
	s.kernel = ""
	s.alpha = 0
	if s.State.CanTransitionTo(contracts.SeedCulled) {
		_ = s.move(k, contracts.SeedCulled, "kernel "+kernel+" unloaded", now)
	}
}

// seedUndo puts back what a change did to one seed and its layer: see
// seedRegistry.remember.
type seedUndo struct {
	r        *seedRegistry
	key      seedKey
	ptr      *seed // the seed before the change, nil when there was none
	prev     seed  // its fields before the change
	layerHad bool
	next     int
}

// remember records seed k and its layer before a change, for restore.
// Callers hold Host.mu.
func (r *seedRegistry) remember(k seedKey) seedUndo {
	u := seedUndo{r: r, key: k, next: r.next}
	_, u.layerHad = r.layers[k.layer]
	if s, ok := r.seeds[k]; ok {
		u.ptr, u.prev = s, *s
		u.prev.transitions = slices.Clone(s.transitions)
	}
	return u
}

// restore undoes the change: the seed gets back its state, kernel, alpha
// and transitions (its signal count and latest signal, which a change does
// not touch, stay as they are now), a seed the change created goes, and so
// does a layer it registered. Callers hold Host.mu.
func (u seedUndo) restore() {
	if u.ptr == nil {
		delete(u.r.seeds, u.key)
	} else {
		s := u.ptr
		s.Seed, s.kernel, s.alpha, s.alphaSetAt, s.transitions = u.prev.Seed, u.prev.kernel, u.prev.alpha, u.prev.alphaSetAt, u.prev.transitions
		u.r.seeds[u.key] = s
	}
	if !u.layerHad {
		delete(u.r.layers, u.key.layer)
		u.r.next = u.next
	}
}

// move changes the seed's state under the contract's transition table; a
// refused transition is an error of class Refused naming the seed.
func (s *seed) move(k seedKey, to contracts.SeedState, why string, now time.Time) error {
	from := s.State
	if err := s.Transition(to, now); err != nil {
		var te *contracts.TransitionError
		if errors.As(err, &te) {
			// The contract's message names the seed by its UUID: name it
			// by layer and index, as the request did.
			return failure.Errorf(failure.Refused, "seed %s/%d: %w: %q → %q", k.layer, k.idx, contracts.ErrIllegalTransition, te.From, te.To)
		}
		return failure.Errorf(failure.Refused, "seed %s/%d: %w", k.layer, k.idx, err)
	}
	s.transitions = append(s.transitions, Transition{At: now, From: from, To: to, Why: why})
	if len(s.transitions) > 64 {
		s.transitions = s.transitions[len(s.transitions)-64:]
	}
	if to == contracts.SeedGrafting {
		s.alphaSetAt = now
	}
	return nil
}

// effectiveAlpha is the seed's blend factor now: while grafting it ramps
// linearly from the last set value to 1 over ramp.
func (s *seed) effectiveAlpha(now time.Time, ramp time.Duration) float64 {
	a := s.alpha
	if s.State == contracts.SeedFossilized {
		return 1
	}
	if s.State == contracts.SeedGrafting && ramp > 0 {
		frac := float64(now.Sub(s.alphaSetAt)) / float64(ramp)
		a += (1 - a) * math.Max(0, math.Min(1, frac))
	}
	return math.Max(0, math.Min(1, a))
}

func (h *Host) alpha(l *loaded) float64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	s, ok := h.seeds.seeds[l.seed]
	if !ok {
		return 1
	}
	return s.effectiveAlpha(h.cfg.Now(), h.cfg.GraftingRamp)
}

// SeedView is what the API shows of a seed.
type SeedView struct {
	Layer       string                  `json:"layer"`
	LayerID     int                     `json:"layer_id"`
	SeedIdx     int                     `json:"seed_idx"`
	Seed        contracts.Seed          `json:"seed"`
	State       contracts.SeedState     `json:"state"`
	Kernel      string                  `json:"kernel,omitempty"`
	Alpha       float64                 `json:"alpha"`
	Transitions []Transition            `json:"transitions"`
	Latest      *contracts.HealthSignal `json:"latest_signal,omitempty"`
}

// Seeds lists every seed, by layer id then seed index.
func (h *Host) Seeds() []SeedView {
	h.mu.RLock()
	defer h.mu.RUnlock()
	now := h.cfg.Now()
	out := make([]SeedView, 0, len(h.seeds.seeds))
	for k, s := range h.seeds.seeds {
		v := SeedView{Layer: k.layer, LayerID: s.LayerID, SeedIdx: k.idx, Seed: s.Seed, State: s.State,
			Kernel: s.kernel, Alpha: s.effectiveAlpha(now, h.cfg.GraftingRamp),
			Transitions: append([]Transition{}, s.transitions...), Latest: s.latest}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].LayerID != out[j].LayerID {
			return out[i].LayerID < out[j].LayerID
		}
		return out[i].SeedIdx < out[j].SeedIdx
	})
	return out
}

// LayerView maps a layer name to the layer_id its signals carry.
type LayerView struct {
	Name    string `json:"layer_name"`
	LayerID int    `json:"layer_id"`
	Seeds   int    `json:"seeds"`
}

// Layers lists the layer mapping, by id.
func (h *Host) Layers() []LayerView {
	h.mu.RLock()
	defer h.mu.RUnlock()
	count := map[string]int{}
	for k := range h.seeds.seeds {
		count[k.layer]++
	}
	out := make([]LayerView, 0, len(h.seeds.layers))
	for name, id := range h.seeds.layers {
		out = append(out, LayerView{Name: name, LayerID: id, Seeds: count[name]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LayerID < out[j].LayerID })
	return out
}

// RegisterLayer declares a layer this host serves (so commands for it are
// accepted before any kernel is loaded) and returns its layer id. A new
// layer is saved through the change hook; when that fails the layer is not
// registered and the error says why.
func (h *Host) RegisterLayer(name string) (int, error) {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	h.mu.Lock()
	if id, ok := h.seeds.layers[name]; ok {
		h.mu.Unlock()
		return id, nil
	}
	undo := h.seeds.remember(seedKey{layer: name, idx: -1})
	id := h.seeds.registerLayer(name)
	h.mu.Unlock()
	if err := h.saveChange(); err != nil {
		h.mu.Lock()
		undo.restore()
		h.mu.Unlock()
		return -1, err
	}
	return id, nil
}

// SetSeedState moves a seed through its lifecycle under the contract's
// transition table. When the change hook fails, the seed keeps its state
// and the error says why.
func (h *Host) SetSeedState(layer string, idx int, to contracts.SeedState, why string) error {
	return h.changeSeed(layer, idx, func(k seedKey, s *seed) error { return s.move(k, to, why, h.cfg.Now()) })
}

// SetAlpha sets a seed's blend factor, clamped to [0, 1]; while grafting
// the ramp restarts from it. When the change hook fails, the seed keeps
// its alpha and the error says why.
func (h *Host) SetAlpha(layer string, idx int, alpha float64) error {
	if math.IsNaN(alpha) {
		return failure.Errorf(failure.BadInput, "seed %s/%d: alpha is NaN", layer, idx)
	}
	return h.changeSeed(layer, idx, func(_ seedKey, s *seed) error {
		s.alpha = math.Max(0, math.Min(1, alpha))
		s.alphaSetAt = h.cfg.Now()
		return nil
	})
}

// changeSeed applies change to a seed and saves it, or undoes it.
func (h *Host) changeSeed(layer string, idx int, change func(seedKey, *seed) error) error {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	k := seedKey{layer, idx}
	h.mu.Lock()
	s, ok := h.seeds.seeds[k]
	if !ok {
		h.mu.Unlock()
		return failure.Errorf(failure.NotFound, "no seed %s/%d", layer, idx)
	}
	undo := h.seeds.remember(k)
	err := change(k, s)
	h.mu.Unlock()
	if err != nil {
		return err
	}
	if err := h.saveChange(); err != nil { // outside h.mu: the hook reads the host's state
		h.mu.Lock()
		undo.restore()
		h.mu.Unlock()
		return err
	}
	return nil
}

// ServesLayer reports whether this host serves the layer: it has
// registered it (a kernel was loaded into it, or it was declared).
func (h *Host) ServesLayer(name string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	_, ok := h.seeds.layers[name]
	return ok
}

// HandleCommand executes a control.kasmina.commands command. Its error
// carries a failure class, which decides what the bus consumer does: a
// permanent class (failure.Class.Permanent) dead-letters the command at
// once, any other leaves it pending for another delivery.
//
// load_kernel's artifact_id is a kernel id resolved through Urza, which
// then names the kernel, or a reference (a path, file://, http(s)://,
// s3://), in which case the kernel is named by its kernel_id, else by the
// reference's last path element (see LoadRequest.Name).
func (h *Host) HandleCommand(ctx context.Context, cmd oona.Command) error {
	log := h.log.With(slog.String("event_id", cmd.Message.EventID), slog.String("command", cmd.Payload.CommandName()))
	var err error
	switch p := cmd.Payload.(type) {
	case *oona.LoadKernel:
		// A command redelivered after it was handled is acknowledged.
		if h.seedHolds(seedKey{p.LayerName, p.SeedIdx}, p.ArtifactID) {
			return nil
		}
		req := LoadRequest{Ref: p.ArtifactID, Layer: p.LayerName, SeedIdx: p.SeedIdx}
		if !isReference(p.ArtifactID) {
			req.Name = p.ArtifactID // checked before Urza is asked
		}
		_, err = h.Load(ctx, req)
	case *oona.UnloadKernel:
		h.mu.RLock()
		s, ok := h.seeds.seeds[seedKey{p.LayerName, p.SeedIdx}]
		kernel := ""
		if ok {
			kernel = s.kernel
		}
		h.mu.RUnlock()
		if kernel == "" {
			return nil // nothing attached: already done
		}
		err = h.Unload(ctx, kernel)
	case *oona.SetSeedState:
		err = h.SetSeedState(p.LayerName, p.SeedIdx, p.State, "command "+cmd.Message.EventID)
	case *oona.SetAlpha:
		err = h.SetAlpha(p.LayerName, p.SeedIdx, p.Alpha)
	default:
		err = failure.Errorf(failure.Unsupported, "unknown command %q", cmd.Payload.CommandName())
	}
	if err != nil {
		err = classify(err, failure.Internal)
		log.Warn("command failed", slog.String("class", failure.ClassOf(err).String()), slog.Any("err", err))
		return err
	}
	log.Info("command handled")
	return nil
}

// seedHolds reports whether seed k holds the kernel that artifact (a
// load_kernel artifact_id) names: by name (a kernel id), or by the
// reference it was loaded from.
func (h *Host) seedHolds(k seedKey, artifact string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	s, ok := h.seeds.seeds[k]
	if !ok || s.kernel == "" {
		return false
	}
	l, ok := h.kernels[s.kernel]
	return ok && (l.name == artifact || l.source == artifact || l.origin == artifact)
}
