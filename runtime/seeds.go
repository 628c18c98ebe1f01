package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"time"

	"github.com/esper/kasmina-host/contracts"
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
		return fmt.Errorf("%w: seed_idx %d is negative", ErrBadInput, idx)
	}
	s := r.get(seedKey{layer, idx}, now)
	if s.kernel != "" && s.kernel != kernel {
		return fmt.Errorf("%w: seed %s/%d already holds kernel %q; unload it first", ErrRefused, layer, idx, s.kernel)
	}
	if s.State == contracts.SeedFossilized || s.State == contracts.SeedCulled {
		return fmt.Errorf("%w: seed %s/%d is %s and takes no kernel", ErrIllegal, layer, idx, s.State)
	}
	if s.State == contracts.SeedDormant {
		if err := s.move(contracts.SeedGerminated, "kernel "+kernel+" loaded", now); err != nil {
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
		_ = s.move(contracts.SeedCulled, "kernel "+kernel+" unloaded", now)
	}
}

func (s *seed) move(to contracts.SeedState, why string, now time.Time) error {
	from := s.State
	if err := s.Transition(to, now); err != nil {
		return fmt.Errorf("seed %d/%d: %w", s.LayerID, s.Position, err)
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
// accepted before any kernel is loaded) and returns its layer id.
func (h *Host) RegisterLayer(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seeds.registerLayer(name)
}

// SetSeedState moves a seed through its lifecycle under the contract's
// transition table.
func (h *Host) SetSeedState(layer string, idx int, to contracts.SeedState, why string) error {
	h.mu.Lock()
	s, ok := h.seeds.seeds[seedKey{layer, idx}]
	if !ok {
		h.mu.Unlock()
		return fmt.Errorf("%w: seed %s/%d", ErrNotFound, layer, idx)
	}
	err := s.move(to, why, h.cfg.Now())
	h.mu.Unlock()
	if err != nil {
		return err
	}
	h.changed() // outside h.mu: the hook reads the host's state
	return nil
}

// SetAlpha sets a seed's blend factor, clamped to [0, 1]; while grafting
// the ramp restarts from it.
func (h *Host) SetAlpha(layer string, idx int, alpha float64) error {
	if math.IsNaN(alpha) {
		return fmt.Errorf("%w: alpha is NaN", ErrBadInput)
	}
	h.mu.Lock()
	s, ok := h.seeds.seeds[seedKey{layer, idx}]
	if !ok {
		h.mu.Unlock()
		return fmt.Errorf("%w: seed %s/%d", ErrNotFound, layer, idx)
	}
	s.alpha = math.Max(0, math.Min(1, alpha))
	s.alphaSetAt = h.cfg.Now()
	h.mu.Unlock()
	h.changed()
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

// HandleCommand executes a control.kasmina.commands command.
func (h *Host) HandleCommand(ctx context.Context, cmd oona.Command) error {
	log := h.log.With(slog.String("event_id", cmd.Message.EventID), slog.String("command", cmd.Payload.CommandName()))
	var err error
	switch p := cmd.Payload.(type) {
	case *oona.LoadKernel:
		name := p.ArtifactID
		// A command redelivered after it was handled is acknowledged.
		if v, ok := h.Kernel(name); ok && v.Layer == p.LayerName && v.SeedIdx == p.SeedIdx {
			return nil
		}
		_, err = h.Load(ctx, LoadRequest{Name: name, Ref: p.ArtifactID, Layer: p.LayerName, SeedIdx: p.SeedIdx})
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
		err = fmt.Errorf("unknown command %q", cmd.Payload.CommandName())
	}
	if err != nil {
		log.Warn("command failed", slog.Any("err", err))
		if errors.Is(err, ErrRuntime) || errors.Is(err, ErrFetch) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err // transient: leave it pending for another delivery
		}
		return oona.Permanent(err)
	}
	log.Info("command handled")
	return nil
}
