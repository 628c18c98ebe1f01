package runtime

import (
	"errors"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// seedKey names a seed: its layer and its index in the layer.
type seedKey struct {
	layer string
	idx   int
}

// layerBook holds the layers the host serves (name → stable layer id) and
// their seeds, each with its state, kernel, alpha and latest signal. It is
// self-locking: its methods take its lock, never call out while holding
// it, and hand out copies, never its maps. A change returns an undo that
// puts back what it changed, for a change the state store refuses.
type layerBook struct {
	mu    sync.Mutex
	ids   map[string]int // layer name → layer id
	next  int            // the next id a new layer gets
	seeds map[seedKey]*seed
}

// seed is one seed the host knows, with what the contract's Seed does not
// hold.
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

// maxTransitions bounds the transitions a seed keeps.
const maxTransitions = 64

func newLayerBook() *layerBook {
	return &layerBook{ids: make(map[string]int), seeds: make(map[seedKey]*seed)}
}

// declare registers the layer name, giving it the next free id when it is
// new, and returns its id; undo forgets a layer it registered.
func (b *layerBook) declare(name string) (id int, undo func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.rememberLocked(seedKey{layer: name, idx: -1})
	return b.declareLocked(name), u.restore
}

func (b *layerBook) declareLocked(name string) int {
	if id, ok := b.ids[name]; ok {
		return id
	}
	id := b.next
	b.ids[name] = id
	b.next++
	return id
}

// layerID returns the layer's id, or false when the host does not serve it.
func (b *layerBook) layerID(name string) (int, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	id, ok := b.ids[name]
	return id, ok
}

// kernelAt returns the kernel seed k holds, "" when none (or no such seed).
func (b *layerBook) kernelAt(k seedKey) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.seeds[k]; ok {
		return s.kernel
	}
	return ""
}

// attach puts kernel into seed k (creating the seed, and its layer, when
// new), germinating a dormant seed. A seed in a terminal state (fossilized,
// culled) takes no kernel; a seed holding another kernel must be unloaded
// first.
func (b *layerBook) attach(k seedKey, kernel, blueprintID string, now time.Time) (undo func(), err error) {
	if k.idx < 0 {
		return nil, failure.Errorf(failure.BadInput, "seed_idx %d is negative", k.idx)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.seeds[k]; ok {
		if s.kernel != "" && s.kernel != kernel {
			return nil, failure.Errorf(failure.Conflict, "seed %s/%d already holds kernel %q; unload it first", k.layer, k.idx, s.kernel)
		}
		if s.State == contracts.SeedFossilized || s.State == contracts.SeedCulled {
			return nil, failure.Errorf(failure.Refused, "seed %s/%d is %s and takes no kernel", k.layer, k.idx, s.State)
		}
	}
	u := b.rememberLocked(k)
	s, ok := b.seeds[k]
	if !ok {
		s = &seed{Seed: contracts.NewSeed(b.declareLocked(k.layer), k.idx)}
		s.CreatedAt, s.UpdatedAt = now, now
		b.seeds[k] = s
	}
	if s.State == contracts.SeedDormant {
		if err := s.move(k, contracts.SeedGerminated, "kernel "+kernel+" loaded", now); err != nil {
			u.restoreLocked()
			return nil, err
		}
	}
	s.kernel = kernel
	if blueprintID != "" {
		bp := blueprintID
		s.BlueprintID = &bp
	}
	return u.restore, nil
}

// detach takes kernel out of seed k. A live seed losing its kernel is
// culled, as Esper's Kasmina does on unload. A directly served kernel's own
// seed (layer = kernel name, index 0) goes with it instead, so that the
// kernel can be loaded again (a culled seed takes no kernel); its layer id
// stays registered.
func (b *layerBook) detach(k seedKey, kernel string, now time.Time) (undo func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.rememberLocked(k)
	s, ok := b.seeds[k]
	if !ok || s.kernel != kernel {
		return u.restore
	}
	if k.layer == kernel && k.idx == 0 {
		delete(b.seeds, k)
		return u.restore
	}
	s.kernel = ""
	s.alpha = 0
	if s.State.CanTransitionTo(contracts.SeedCulled) {
		_ = s.move(k, contracts.SeedCulled, "kernel "+kernel+" unloaded", now)
	}
	return u.restore
}

// setState moves seed k through its lifecycle under the contract's
// transition table and returns the state it left.
func (b *layerBook) setState(k seedKey, to contracts.SeedState, why string, now time.Time) (from contracts.SeedState, undo func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.seeds[k]
	if !ok {
		return "", nil, failure.Errorf(failure.NotFound, "no seed %s/%d", k.layer, k.idx)
	}
	u := b.rememberLocked(k)
	from = s.State
	if err := s.move(k, to, why, now); err != nil {
		return from, nil, err
	}
	return from, u.restore, nil
}

// setAlpha sets seed k's blend factor, clamped to [0, 1]; while grafting
// the ramp restarts from it.
func (b *layerBook) setAlpha(k seedKey, alpha float64, now time.Time) (undo func(), err error) {
	if math.IsNaN(alpha) {
		return nil, failure.Errorf(failure.BadInput, "seed %s/%d: alpha is NaN", k.layer, k.idx)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.seeds[k]
	if !ok {
		return nil, failure.Errorf(failure.NotFound, "no seed %s/%d", k.layer, k.idx)
	}
	u := b.rememberLocked(k)
	s.alpha = math.Max(0, math.Min(1, alpha))
	s.alphaSetAt = now
	return u.restore, nil
}

// alpha is seed k's blend factor now (1 when there is no such seed).
func (b *layerBook) alpha(k seedKey, now time.Time, ramp time.Duration) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.seeds[k]
	if !ok {
		return 1
	}
	return s.effectiveAlpha(now, ramp)
}

// seedUndo puts back what a change did to one seed and its layer.
type seedUndo struct {
	b        *layerBook
	key      seedKey
	ptr      *seed // the seed before the change, nil when there was none
	prev     seed  // its fields before the change
	layerHad bool
	next     int
}

// rememberLocked records seed k and its layer before a change.
func (b *layerBook) rememberLocked(k seedKey) *seedUndo {
	u := &seedUndo{b: b, key: k, next: b.next}
	_, u.layerHad = b.ids[k.layer]
	if s, ok := b.seeds[k]; ok {
		u.ptr, u.prev = s, *s
		u.prev.transitions = slices.Clone(s.transitions)
	}
	return u
}

// restore undoes the change: the seed gets back its state, kernel, alpha
// and transitions (its signal count and latest signal, which a change does
// not touch, stay as they are now), a seed the change created goes, and so
// does a layer it registered.
func (u *seedUndo) restore() {
	u.b.mu.Lock()
	defer u.b.mu.Unlock()
	u.restoreLocked()
}

func (u *seedUndo) restoreLocked() {
	b := u.b
	if u.ptr == nil {
		delete(b.seeds, u.key)
	} else {
		s := u.ptr
		s.Seed, s.kernel, s.alpha, s.alphaSetAt, s.transitions = u.prev.Seed, u.prev.kernel, u.prev.alpha, u.prev.alphaSetAt, u.prev.transitions
		b.seeds[u.key] = s
	}
	if !u.layerHad {
		delete(b.ids, u.key.layer)
		b.next = u.next
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
	if len(s.transitions) > maxTransitions {
		s.transitions = s.transitions[len(s.transitions)-maxTransitions:]
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

// seedViews lists every seed, by layer id then seed index.
func (b *layerBook) seedViews(now time.Time, ramp time.Duration) []SeedView {
	b.mu.Lock()
	out := make([]SeedView, 0, len(b.seeds))
	for k, s := range b.seeds {
		out = append(out, SeedView{Layer: k.layer, LayerID: s.LayerID, SeedIdx: k.idx, Seed: s.Seed, State: s.State,
			Kernel: s.kernel, Alpha: s.effectiveAlpha(now, ramp),
			Transitions: append([]Transition{}, s.transitions...), Latest: s.latest})
	}
	b.mu.Unlock()
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

// layerViews lists the layer mapping, by id.
func (b *layerBook) layerViews() []LayerView {
	b.mu.Lock()
	count := map[string]int{}
	for k := range b.seeds {
		count[k.layer]++
	}
	out := make([]LayerView, 0, len(b.ids))
	for name, id := range b.ids {
		out = append(out, LayerView{Name: name, LayerID: id, Seeds: count[name]})
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].LayerID < out[j].LayerID })
	return out
}

// signalInputs is what a seed's health signal needs from the book.
type signalInputs struct {
	layerID, chunkID int
	active, total    int
	state            contracts.SeedState
}

// signalInputs returns what seed k's next signal needs, or false when k
// does not hold kernel (it was unloaded or swapped meanwhile).
func (b *layerBook) signalInputs(k seedKey, kernel string) (signalInputs, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.seeds[k]
	if !ok || s.kernel != kernel {
		return signalInputs{}, false
	}
	in := signalInputs{layerID: s.LayerID, chunkID: s.signals, state: s.State}
	// A layer's active seeds are its training or grafting ones, as
	// Seed.is_active says.
	for k2, s2 := range b.seeds {
		if k2.layer != k.layer {
			continue
		}
		in.total++
		if s2.IsActive() {
			in.active++
		}
	}
	return in, true
}

// signalled records sig as seed k's latest signal and advances its chunk
// id, when k still holds kernel.
func (b *layerBook) signalled(k seedKey, kernel string, sig contracts.HealthSignal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.seeds[k]; ok && s.kernel == kernel {
		s.signals++
		s.latest = &sig
	}
}

// latestSignals returns each seed's latest signal, by layer id then seed.
func (b *layerBook) latestSignals() []contracts.HealthSignal {
	b.mu.Lock()
	var out []contracts.HealthSignal
	for _, s := range b.seeds {
		if s.latest != nil {
			out = append(out, *s.latest)
		}
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].LayerID != out[j].LayerID {
			return out[i].LayerID < out[j].LayerID
		}
		return out[i].SeedID < out[j].SeedID
	})
	return out
}

// records returns the layer mapping and every seed for the State, seeds
// sorted by layer name then index.
func (b *layerBook) records() (map[string]int, []SeedRecord) {
	b.mu.Lock()
	layers := make(map[string]int, len(b.ids))
	for name, id := range b.ids {
		layers[name] = id
	}
	seeds := make([]SeedRecord, 0, len(b.seeds))
	for k, s := range b.seeds {
		seeds = append(seeds, SeedRecord{Layer: k.layer, SeedIdx: k.idx, Seed: s.Seed, Alpha: s.alpha})
	}
	b.mu.Unlock()
	sort.Slice(seeds, func(i, j int) bool {
		if seeds[i].Layer != seeds[j].Layer {
			return seeds[i].Layer < seeds[j].Layer
		}
		return seeds[i].SeedIdx < seeds[j].SeedIdx
	})
	return layers, seeds
}

// maxLayerID is the largest layer id restore accepts from a state file:
// ids are handed out from 0 up, and this bound keeps the next one (and the
// layer_id of health signals) far from overflow.
const maxLayerID = 1<<31 - 1

// restore brings back a saved layer mapping and seeds, repairing what a
// damaged file gets wrong: layer ids out of range or given to two layers
// (the first name in order keeps it, the other gets a fresh id when next
// used), seeds that do not validate or have a negative index (dropped),
// alphas outside [0, 1] (clamped). A layer registered before the restore
// keeps its id.
func (b *layerBook) restore(layers map[string]int, seeds []SeedRecord, now time.Time, log *slog.Logger) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Layer ids name layers on the bus: a damaged file must not give two
	// layers one id. Names are taken in order, so the outcome does not
	// depend on map iteration.
	names := make([]string, 0, len(layers))
	for name := range layers {
		names = append(names, name)
	}
	sort.Strings(names)
	taken := make(map[int]string, len(b.ids)+len(names))
	for name, id := range b.ids {
		taken[id] = name
	}
	for _, name := range names {
		id := layers[name]
		other, dup := taken[id]
		_, known := b.ids[name]
		switch {
		case id < 0 || id > maxLayerID:
			log.Warn("state: layer id out of range, layer gets a new id", slog.String("layer", name), slog.Int("layer_id", id))
			continue
		case known:
			continue // registered before the restore: keeps its id
		case dup:
			log.Warn("state: layer id already taken, layer gets a new id", slog.String("layer", name),
				slog.Int("layer_id", id), slog.String("taken_by", other))
			continue
		}
		taken[id] = name
		b.ids[name] = id
		if id >= b.next {
			b.next = id + 1
		}
	}
	for _, rec := range seeds {
		err := rec.Seed.Validate()
		if err == nil && rec.SeedIdx < 0 {
			err = failure.Errorf(failure.Malformed, "seed_idx %d is negative", rec.SeedIdx)
		}
		if err != nil {
			log.Warn("state: seed not restored", slog.String("layer", rec.Layer), slog.Int("seed_idx", rec.SeedIdx), slog.Any("err", err))
			continue
		}
		alpha := rec.Alpha
		if !(alpha >= 0 && alpha <= 1) {
			log.Warn("state: seed alpha outside [0, 1], clamped", slog.String("layer", rec.Layer), slog.Int("seed_idx", rec.SeedIdx), slog.Float64("alpha", alpha))
			alpha = max(0, min(1, alpha)) // JSON holds no NaN
		}
		s := &seed{Seed: rec.Seed, alpha: alpha, alphaSetAt: now}
		s.LayerID = b.declareLocked(rec.Layer)
		b.seeds[seedKey{rec.Layer, rec.SeedIdx}] = s
	}
}
