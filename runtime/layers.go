package runtime

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Bounds on layers and their seeds.
const (
	// DefaultNumSeeds is how many seed slots a layer gets when nobody
	// declared how many (esperlite's KasminaLayer default).
	DefaultNumSeeds = 4
	// MaxSeeds is the most seed slots one layer may have.
	MaxSeeds = 64
	// MaxLayerID is the largest layer id: HealthSignal.layer_id is a
	// Python int, but every Esper consumer keeps it in 31 bits.
	MaxLayerID = 1<<31 - 1
	// maxHistory bounds the culled seeds a slot remembers.
	maxHistory = 16
	// maxTransitions bounds the transitions a seed keeps.
	maxTransitions = 64
	// maxLayerNameBytes bounds a layer name.
	maxLayerNameBytes = 255
	// maxShapeRank bounds a declared per-sample shape.
	maxShapeRank = 8
)

// LayerIDOf is the stable id of a layer its owner gave no layer_id:
// FNV-1a (32-bit: offset basis 2166136261, prime 16777619) of the name's
// UTF-8 bytes, masked to 31 bits. Every host computes the same id for the
// same name, across restarts and versions (runtime/oona/COMMANDS.md has
// test vectors and the Python that computes it).
func LayerIDOf(name string) int {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return int(h & 0x7fffffff)
}

// DeclaredBy says how a layer came to be declared on the host.
type DeclaredBy uint8

// The ways a layer is declared.
const (
	// ByHTTP: PUT /v1/layers/{layer_name}.
	ByHTTP DeclaredBy = iota + 1
	// ByFile: the --layers file.
	ByFile
	// ByCommand: a command for an unknown layer, with
	// --accept-all-layers.
	ByCommand
	// ByKernel: implicitly, by a kernel loaded into it (POST /v1/kernels
	// with a layer_name no one declared, or a directly served kernel's own
	// layer).
	ByKernel
)

// String is the declared_by the API shows: http, file, command, kernel.
func (d DeclaredBy) String() string {
	switch d {
	case ByHTTP:
		return "http"
	case ByFile:
		return "file"
	case ByCommand:
		return "command"
	case ByKernel:
		return "kernel"
	}
	return "unknown"
}

// MarshalText writes String.
func (d DeclaredBy) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (d *DeclaredBy) UnmarshalText(b []byte) error {
	for _, v := range []DeclaredBy{ByHTTP, ByFile, ByCommand, ByKernel} {
		if string(b) == v.String() {
			*d = v
			return nil
		}
	}
	return fmt.Errorf("declared_by %q: want http, file, command or kernel", b)
}

// LayerSpec is what a layer's owner declares about it (the body of PUT
// /v1/layers/{layer_name}, an entry of the --layers file).
type LayerSpec struct {
	// NumSeeds is how many seed slots the layer has, 1 to MaxSeeds; 0
	// leaves an existing layer's as they are and gives a new one
	// DefaultNumSeeds (the HTTP route and the --layers file require it).
	NumSeeds int `json:"num_seeds"`
	// LayerID is the layer's id on the bus (0 to MaxLayerID); nil gives it
	// the stable id of its name (LayerIDOf). An existing layer keeps its
	// id: a declaration that names another one is refused.
	LayerID *int `json:"layer_id,omitempty"`
	// InputShape and OutputShape are the per-sample shapes (no batch) a
	// seed's kernel must take and give; nil declares none (a
	// redeclaration that omits them keeps the ones declared).
	InputShape  []int `json:"input_shape,omitempty"`
	OutputShape []int `json:"output_shape,omitempty"`
}

// check validates the spec's own values, naming the member.
func (s *LayerSpec) check() error {
	if s.NumSeeds < 1 || s.NumSeeds > MaxSeeds {
		return failure.Errorf(failure.BadInput, "num_seeds %d: want 1 to %d", s.NumSeeds, MaxSeeds)
	}
	if s.LayerID != nil && (*s.LayerID < 0 || *s.LayerID > MaxLayerID) {
		return failure.Errorf(failure.BadInput, "layer_id %d: want 0 to %d", *s.LayerID, MaxLayerID)
	}
	for _, sh := range []struct {
		name  string
		shape []int
	}{{"input_shape", s.InputShape}, {"output_shape", s.OutputShape}} {
		if sh.shape == nil {
			continue
		}
		if len(sh.shape) == 0 || len(sh.shape) > maxShapeRank {
			return failure.Errorf(failure.BadInput, "%s %v: want 1 to %d dimensions (per sample, no batch)", sh.name, sh.shape, maxShapeRank)
		}
		for _, d := range sh.shape {
			if d < 1 {
				return failure.Errorf(failure.BadInput, "%s %v: every dimension must be at least 1", sh.name, sh.shape)
			}
		}
	}
	return nil
}

// validLayerName refuses a layer name no front end could carry.
func validLayerName(name string) error {
	switch {
	case name == "" || strings.TrimSpace(name) == "":
		return failure.Errorf(failure.BadInput, "layer_name is empty")
	case len(name) > maxLayerNameBytes:
		return failure.Errorf(failure.BadInput, "layer_name %q… is %d bytes, longer than %d", name[:32], len(name), maxLayerNameBytes)
	case !utf8.ValidString(name):
		return failure.Errorf(failure.BadInput, "layer_name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return failure.Errorf(failure.BadInput, "layer_name %q: no control characters", name)
		}
	}
	return nil
}

// seedKey names a seed slot: its layer and its index in the layer.
type seedKey struct {
	layer string
	idx   int
}

// layerBook holds the layers the host serves, each with its declaration,
// its stable id and its seed slots. A slot holds one seed at a time: a
// kernel loaded into a dormant seed germinates it; unloading the kernel
// culls the seed, which goes to the slot's history, and a fresh dormant
// seed (a new seed_id) takes the slot. The book is self-locking: its
// methods take its lock, never call out while holding it, and hand out
// copies, never its maps. A change returns an undo that puts back what it
// changed, for a change the state store refuses.
type layerBook struct {
	mu     sync.Mutex
	layers map[string]*layer
	byID   map[int]string // layer id → name
}

// layer is one layer and its slots.
type layer struct {
	name string
	id   int
	// idDeclared is true when the owner gave the id (not LayerIDOf).
	idDeclared bool
	in, out    []int // declared shapes, nil when none
	by         DeclaredBy
	// direct marks a directly served kernel's own layer (named after the
	// kernel, one slot): it goes when the kernel is unloaded.
	direct bool
	slots  []*slot
}

// slot is one seed position of a layer.
type slot struct {
	seed    *seed
	history []SeedHistory
}

// seed is the seed a slot holds now, with what the contract's Seed does
// not hold.
type seed struct {
	contracts.Seed
	kernel      string // the kernel (model name) it holds, "" when none
	artifact    string // what the kernel was loaded from (artifact_id)
	kin, kout   []int  // the kernel's shapes, for declarations to check
	alpha       float64
	alphaSetAt  time.Time
	transitions []Transition
	signals     int // signals emitted: the chunk_id of the next one
	latest      *contracts.HealthSignal
}

// Transition records one state change of a seed (or, From equal to To, a
// kernel swapped in a seed that keeps its state).
type Transition struct {
	At   time.Time           `json:"at"`
	From contracts.SeedState `json:"from"`
	To   contracts.SeedState `json:"to"`
	Why  string              `json:"why"`
}

// SeedHistory is a seed that held a slot before the seed there now:
// culled when its kernel was unloaded (or fossilized, when a fossilized
// seed's kernel was).
type SeedHistory struct {
	SeedID      string              `json:"seed_id"`
	State       contracts.SeedState `json:"state"`
	ArtifactID  string              `json:"artifact_id,omitempty"`
	Kernel      string              `json:"kernel,omitempty"`
	BlueprintID *string             `json:"blueprint_id,omitempty"`
	CreatedAt   time.Time           `json:"created_at"`
	EndedAt     time.Time           `json:"ended_at"`
	Why         string              `json:"why"`
}

func newLayerBook() *layerBook {
	return &layerBook{layers: make(map[string]*layer), byID: make(map[int]string)}
}

// newSlot is a slot holding a fresh dormant seed of layer id at index idx.
func newSlot(id, idx int, now time.Time) *slot {
	s := &seed{Seed: contracts.NewSeed(id, idx)}
	s.CreatedAt, s.UpdatedAt, s.alphaSetAt = now, now, now
	return &slot{seed: s}
}

// declared is what a declaration did.
type declared struct {
	id      int
	created bool
	changed bool
}

// declare declares a layer, or changes an existing one's declaration:
// num_seeds may grow, and shrink over empty slots only; shapes may be
// added or changed where no loaded kernel contradicts them; the layer id
// never changes. A layer declared implicitly (by a kernel or a command)
// takes the declarer given here.
func (b *layerBook) declare(name string, spec LayerSpec, by DeclaredBy, now time.Time) (declared, func(), error) {
	if err := validLayerName(name); err != nil {
		return declared{}, nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.layers[name]
	if spec.NumSeeds == 0 {
		spec.NumSeeds = DefaultNumSeeds
		if ok {
			spec.NumSeeds = len(l.slots)
		}
	}
	if err := spec.check(); err != nil {
		return declared{}, nil, err
	}
	if !ok {
		u := b.rememberLocked(name)
		id, err := b.newLayerLocked(name, spec, by, false, now)
		if err != nil {
			return declared{}, nil, err
		}
		return declared{id: id, created: true, changed: true}, u.restore, nil
	}
	if spec.LayerID != nil && *spec.LayerID != l.id {
		return declared{}, nil, failure.Errorf(failure.Conflict, "layer %q has layer_id %d; a declaration cannot change it (retire the layer first)", name, l.id)
	}
	for i := spec.NumSeeds; i < len(l.slots); i++ {
		if k := l.slots[i].seed.kernel; k != "" {
			return declared{}, nil, failure.Errorf(failure.Conflict, "num_seeds %d would drop seed %d of layer %q, which holds kernel %q; unload it first", spec.NumSeeds, i, name, k)
		}
	}
	for i, sl := range l.slots {
		s := sl.seed
		if s.kernel == "" {
			continue
		}
		if spec.InputShape != nil && !slices.Equal(spec.InputShape, s.kin) {
			return declared{}, nil, failure.Errorf(failure.Conflict, "input_shape %v contradicts kernel %q in seed %d of layer %q, which takes %v", spec.InputShape, s.kernel, i, name, s.kin)
		}
		if spec.OutputShape != nil && !slices.Equal(spec.OutputShape, s.kout) {
			return declared{}, nil, failure.Errorf(failure.Conflict, "output_shape %v contradicts kernel %q in seed %d of layer %q, which gives %v", spec.OutputShape, s.kernel, i, name, s.kout)
		}
	}
	u := b.rememberLocked(name)
	d := declared{id: l.id}
	if spec.NumSeeds != len(l.slots) {
		d.changed = true
		for i := len(l.slots); i < spec.NumSeeds; i++ {
			l.slots = append(l.slots, newSlot(l.id, i, now))
		}
		l.slots = l.slots[:spec.NumSeeds]
	}
	if spec.InputShape != nil && !slices.Equal(spec.InputShape, l.in) {
		l.in, d.changed = slices.Clone(spec.InputShape), true
	}
	if spec.OutputShape != nil && !slices.Equal(spec.OutputShape, l.out) {
		l.out, d.changed = slices.Clone(spec.OutputShape), true
	}
	if spec.LayerID != nil && !l.idDeclared {
		l.idDeclared, d.changed = true, true
	}
	if by != l.by {
		l.by, d.changed = by, true
	}
	if l.direct {
		l.direct, d.changed = false, true // declared: it stays when its kernel goes
	}
	return d, u.restore, nil
}

// newLayerLocked adds a layer; its id is the declared one, else its
// name's stable id, and must be free on this host.
func (b *layerBook) newLayerLocked(name string, spec LayerSpec, by DeclaredBy, direct bool, now time.Time) (int, error) {
	id := LayerIDOf(name)
	if spec.LayerID != nil {
		id = *spec.LayerID
	}
	if other, taken := b.byID[id]; taken {
		if spec.LayerID != nil {
			return 0, failure.Errorf(failure.Conflict, "layer_id %d is taken by layer %q on this host", id, other)
		}
		return 0, failure.Errorf(failure.Conflict, "layer %q's stable id %d (FNV-1a of its name) is taken by layer %q on this host; declare the layer with a layer_id of its own", name, id, other)
	}
	l := &layer{name: name, id: id, idDeclared: spec.LayerID != nil, by: by, direct: direct,
		in: slices.Clone(spec.InputShape), out: slices.Clone(spec.OutputShape)}
	for i := range spec.NumSeeds {
		l.slots = append(l.slots, newSlot(id, i, now))
	}
	b.layers[name] = l
	b.byID[id] = name
	return id, nil
}

// retire forgets a layer and returns the kernels its seeds held, for the
// host to unload.
func (b *layerBook) retire(name string) (kernels []string, undo func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.layers[name]
	if !ok {
		return nil, nil, failure.Errorf(failure.NotFound, "no layer %q on this host", name)
	}
	u := b.rememberLocked(name)
	for _, sl := range l.slots {
		if sl.seed.kernel != "" {
			kernels = append(kernels, sl.seed.kernel)
		}
	}
	delete(b.layers, name)
	delete(b.byID, l.id)
	return kernels, u.restore, nil
}

// slotLocked returns slot k, NotFound for an unknown layer and BadInput
// for an index beyond the layer's slots.
func (b *layerBook) slotLocked(k seedKey) (*layer, *slot, error) {
	l, ok := b.layers[k.layer]
	if !ok {
		return nil, nil, failure.Errorf(failure.NotFound, "no layer %q on this host", k.layer)
	}
	if k.idx < 0 || k.idx >= len(l.slots) {
		return nil, nil, failure.Errorf(failure.BadInput, "seed_idx %d is out of range: layer %q has %d seeds (0 to %d)", k.idx, k.layer, len(l.slots), len(l.slots)-1)
	}
	return l, l.slots[k.idx], nil
}

// layerID returns the layer's id, or false when the host does not serve it.
func (b *layerBook) layerID(name string) (int, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.layers[name]; ok {
		return l.id, true
	}
	return 0, false
}

// layerNamed returns the name of the layer whose id is id.
func (b *layerBook) layerNamed(id int) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	name, ok := b.byID[id]
	return name, ok
}

// kernelAt returns the kernel seed k holds, "" when none (or no such seed).
func (b *layerBook) kernelAt(k seedKey) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, sl, err := b.slotLocked(k); err == nil {
		return sl.seed.kernel
	}
	return ""
}

// seedState returns seed k's state and kernel.
func (b *layerBook) seedState(k seedKey) (contracts.SeedState, string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, sl, err := b.slotLocked(k)
	if err != nil {
		return "", "", err
	}
	return sl.seed.State, sl.seed.kernel, nil
}

// implicit is how attach declares a layer nobody declared: by whom, and
// whether it is a directly served kernel's own layer. The zero value
// declares nothing: the layer must exist.
type implicit struct {
	by     DeclaredBy
	direct bool
}

// ensureLocked returns the layer of slot k, declaring it as im says when
// it is unknown (im.by zero: NotFound), and checks k's index.
func (b *layerBook) ensureLocked(k seedKey, im implicit, now time.Time) error {
	if _, ok := b.layers[k.layer]; !ok && im.by != 0 {
		if err := validLayerName(k.layer); err != nil {
			return err
		}
		n := DefaultNumSeeds
		if im.direct {
			n = 1
		}
		if k.idx >= n {
			n = k.idx + 1
		}
		if k.idx < 0 || n > MaxSeeds {
			return failure.Errorf(failure.BadInput, "seed_idx %d: want 0 to %d", k.idx, MaxSeeds-1)
		}
		if _, err := b.newLayerLocked(k.layer, LayerSpec{NumSeeds: n}, im.by, im.direct, now); err != nil {
			return err
		}
	}
	_, _, err := b.slotLocked(k)
	return err
}

// ensure declares the layer of slot k as im says when it is unknown.
func (b *layerBook) ensure(k seedKey, im implicit, now time.Time) (undo func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.rememberLocked(k.layer)
	if err := b.ensureLocked(k, im, now); err != nil {
		u.restoreLocked()
		return nil, err
	}
	return u.restore, nil
}

// attachment is a kernel going into a seed.
type attachment struct {
	kernel, artifact, blueprint string
	in, out                     []int
}

// checkShapes refuses a kernel whose shapes contradict the layer's
// declared ones.
func (l *layer) checkShapes(a attachment) error {
	if l.in != nil && !slices.Equal(l.in, a.in) {
		return failure.Errorf(failure.Refused, "kernel %q takes input %v, but layer %q declares input_shape %v", a.kernel, a.in, l.name, l.in)
	}
	if l.out != nil && !slices.Equal(l.out, a.out) {
		return failure.Errorf(failure.Refused, "kernel %q gives output %v, but layer %q declares output_shape %v", a.kernel, a.out, l.name, l.out)
	}
	return nil
}

// checkAttach says whether a can go into slot k now (declaring nothing),
// so that a load is refused before anything is fetched or placed.
func (b *layerBook) checkAttach(k seedKey, a attachment, swap bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, sl, err := b.slotLocked(k)
	if err != nil {
		return err
	}
	return canAttach(l, sl, k, a, swap)
}

func canAttach(l *layer, sl *slot, k seedKey, a attachment, swap bool) error {
	if err := l.checkShapes(a); err != nil {
		return err
	}
	s := sl.seed
	switch {
	case s.kernel == "" || s.kernel == a.kernel:
		return nil
	case !swap:
		return failure.Errorf(failure.Conflict, "seed %s/%d already holds kernel %q; unload it first", k.layer, k.idx, s.kernel)
	case s.State.Terminal():
		return failure.Errorf(failure.Refused, "seed %s/%d is %s: its kernel %q stays; unload it first", k.layer, k.idx, s.State, s.kernel)
	}
	return nil
}

// attach puts a kernel into seed k, declaring its layer as im says when
// it is unknown. A dormant seed germinates; a seed holding another kernel
// takes the new one in its place when swap is set (its state and alpha
// stay), and refuses it otherwise; a fossilized seed takes no other
// kernel.
func (b *layerBook) attach(k seedKey, a attachment, swap bool, im implicit, now time.Time) (undo func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.rememberLocked(k.layer)
	fail := func(err error) (func(), error) {
		u.restoreLocked()
		return nil, err
	}
	if err := b.ensureLocked(k, im, now); err != nil {
		return fail(err)
	}
	l, sl, _ := b.slotLocked(k)
	if err := canAttach(l, sl, k, a, swap); err != nil {
		return fail(err)
	}
	s := sl.seed
	switch {
	case s.State == contracts.SeedDormant:
		if err := s.move(k, contracts.SeedGerminated, "kernel "+a.kernel+" loaded", now); err != nil {
			return fail(err)
		}
	case s.kernel != a.kernel:
		s.note(Transition{At: now, From: s.State, To: s.State, Why: "kernel " + s.kernel + " swapped for " + a.kernel})
	}
	s.kernel, s.artifact, s.kin, s.kout = a.kernel, a.artifact, slices.Clone(a.in), slices.Clone(a.out)
	if a.blueprint != "" {
		bp := a.blueprint
		s.BlueprintID = &bp
	}
	return u.restore, nil
}

// detach takes kernel out of seed k: the seed is culled (a fossilized one
// stays fossilized) and goes to the slot's history, and a fresh dormant
// seed takes the slot. A directly served kernel's own layer goes with
// its kernel instead.
func (b *layerBook) detach(k seedKey, kernel, why string, now time.Time) (undo func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.rememberLocked(k.layer)
	l, sl, err := b.slotLocked(k)
	if err != nil || sl.seed.kernel != kernel {
		return u.restore
	}
	if l.direct {
		delete(b.layers, l.name)
		delete(b.byID, l.id)
		return u.restore
	}
	l.rotate(sl, k, why, now)
	return u.restore
}

// rotate culls the slot's seed into its history and puts a fresh dormant
// seed in its place.
func (l *layer) rotate(sl *slot, k seedKey, why string, now time.Time) {
	s := sl.seed
	if s.State.CanTransitionTo(contracts.SeedCulled) {
		_ = s.move(k, contracts.SeedCulled, why, now)
	}
	sl.history = append(sl.history, SeedHistory{SeedID: s.SeedID, State: s.State, ArtifactID: s.artifact, Kernel: s.kernel,
		BlueprintID: s.BlueprintID, CreatedAt: s.CreatedAt, EndedAt: now, Why: why})
	if len(sl.history) > maxHistory {
		sl.history = slices.Clone(sl.history[len(sl.history)-maxHistory:])
	}
	sl.seed = newSlot(l.id, k.idx, now).seed
}

// setState moves seed k through its lifecycle under the contract's
// transition table and returns the state it left. Culling a seed that
// holds no kernel rotates its slot (the host unloads a kernel first).
func (b *layerBook) setState(k seedKey, to contracts.SeedState, why string, now time.Time) (from contracts.SeedState, undo func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, sl, err := b.slotLocked(k)
	if err != nil {
		return "", nil, err
	}
	u := b.rememberLocked(k.layer)
	s := sl.seed
	from = s.State
	if to == contracts.SeedCulled && s.kernel == "" {
		if !from.CanTransitionTo(to) {
			return from, nil, s.move(k, to, why, now) // the refusal, naming the seed
		}
		l.rotate(sl, k, why, now)
		return from, u.restore, nil
	}
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
	_, sl, err := b.slotLocked(k)
	if err != nil {
		return nil, err
	}
	u := b.rememberLocked(k.layer)
	sl.seed.alpha = math.Max(0, math.Min(1, alpha))
	sl.seed.alphaSetAt = now
	return u.restore, nil
}

// alpha is seed k's blend factor now (1 when there is no such seed).
func (b *layerBook) alpha(k seedKey, now time.Time, ramp time.Duration) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, sl, err := b.slotLocked(k)
	if err != nil {
		return 1
	}
	return sl.seed.effectiveAlpha(now, ramp)
}

// layerUndo puts back what a change did to one layer.
type layerUndo struct {
	b     *layerBook
	name  string
	ptr   *layer // nil when the layer did not exist
	val   layer
	slots []slotUndo
}

type slotUndo struct {
	sl      *slot
	seed    *seed
	val     seed
	history []SeedHistory
}

// rememberLocked records layer name before a change.
func (b *layerBook) rememberLocked(name string) *layerUndo {
	u := &layerUndo{b: b, name: name}
	l, ok := b.layers[name]
	if !ok {
		return u
	}
	u.ptr, u.val = l, *l
	for _, sl := range l.slots {
		su := slotUndo{sl: sl, seed: sl.seed, val: *sl.seed, history: slices.Clone(sl.history)}
		su.val.transitions = slices.Clone(sl.seed.transitions)
		u.slots = append(u.slots, su)
	}
	return u
}

// restore undoes the change: the layer gets back its declaration, its
// slots their seeds and history, each seed its state, kernel, alpha and
// transitions (its signal count and latest signal, which a change does
// not touch, stay as they are now); a layer the change added goes.
func (u *layerUndo) restore() {
	u.b.mu.Lock()
	defer u.b.mu.Unlock()
	u.restoreLocked()
}

func (u *layerUndo) restoreLocked() {
	b := u.b
	if cur, ok := b.layers[u.name]; ok && b.byID[cur.id] == u.name {
		delete(b.byID, cur.id)
	}
	if u.ptr == nil {
		delete(b.layers, u.name)
		return
	}
	l := u.ptr
	*l = u.val
	l.slots = make([]*slot, len(u.slots))
	for i, su := range u.slots {
		sig, latest := su.seed.signals, su.seed.latest
		*su.seed = su.val
		su.seed.signals, su.seed.latest = sig, latest
		su.sl.seed, su.sl.history = su.seed, su.history
		l.slots[i] = su.sl
	}
	b.layers[u.name] = l
	b.byID[l.id] = u.name
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
	s.note(Transition{At: now, From: from, To: to, Why: why})
	if to == contracts.SeedGrafting {
		s.alphaSetAt = now
	}
	return nil
}

// note records a transition, keeping the latest maxTransitions.
func (s *seed) note(t Transition) {
	s.transitions = append(s.transitions, t)
	if len(s.transitions) > maxTransitions {
		s.transitions = s.transitions[len(s.transitions)-maxTransitions:]
	}
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

// SeedView is what GET /v1/seeds shows of a seed: every slot's seed, its
// layer named.
type SeedView struct {
	Layer       string                  `json:"layer"`
	LayerID     int                     `json:"layer_id"`
	SeedIdx     int                     `json:"seed_idx"`
	Seed        contracts.Seed          `json:"seed"`
	State       contracts.SeedState     `json:"state"`
	Kernel      string                  `json:"kernel,omitempty"`
	ArtifactID  string                  `json:"artifact_id,omitempty"`
	Alpha       float64                 `json:"alpha"`
	Transitions []Transition            `json:"transitions"`
	Latest      *contracts.HealthSignal `json:"latest_signal,omitempty"`
}

// seedViews lists every slot's seed, by layer id then seed index.
func (b *layerBook) seedViews(now time.Time, ramp time.Duration) []SeedView {
	b.mu.Lock()
	var out []SeedView
	for _, l := range b.layers {
		for i, sl := range l.slots {
			s := sl.seed
			out = append(out, SeedView{Layer: l.name, LayerID: l.id, SeedIdx: i, Seed: s.Seed, State: s.State,
				Kernel: s.kernel, ArtifactID: s.artifact, Alpha: s.effectiveAlpha(now, ramp),
				Transitions: append([]Transition{}, s.transitions...), Latest: s.latest})
		}
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

// LayerView is what the API shows of a layer: its declaration and, for
// one layer (GET /v1/layers/{layer_name}), its seeds.
type LayerView struct {
	Name        string     `json:"layer_name"`
	LayerID     int        `json:"layer_id"`
	NumSeeds    int        `json:"num_seeds"`
	InputShape  []int      `json:"input_shape"`
	OutputShape []int      `json:"output_shape"`
	DeclaredBy  DeclaredBy `json:"declared_by"`
	// Kernels counts the seeds holding a kernel.
	Kernels int        `json:"kernels"`
	Seeds   []SlotView `json:"seeds,omitempty"`
}

// SlotView is one seed slot of a layer: the seed it holds now and the
// culled seeds before it (newest last).
type SlotView struct {
	SeedIdx int                 `json:"seed_idx"`
	State   contracts.SeedState `json:"state"`
	Alpha   float64             `json:"alpha"`
	// Kernel is the model name of the kernel the seed holds (null when
	// none); ArtifactID what it was loaded from.
	Kernel      *string                 `json:"kernel"`
	ArtifactID  *string                 `json:"artifact_id"`
	SeedID      string                  `json:"seed_id"`
	BlueprintID *string                 `json:"blueprint_id"`
	Transitions []Transition            `json:"transitions"`
	History     []SeedHistory           `json:"history"`
	Latest      *contracts.HealthSignal `json:"latest_signal,omitempty"`
}

// view renders l; with seeds, its slots too. The caller holds the lock.
func (l *layer) view(seeds bool, now time.Time, ramp time.Duration) LayerView {
	v := LayerView{Name: l.name, LayerID: l.id, NumSeeds: len(l.slots), InputShape: slices.Clone(l.in),
		OutputShape: slices.Clone(l.out), DeclaredBy: l.by}
	for i, sl := range l.slots {
		s := sl.seed
		if s.kernel != "" {
			v.Kernels++
		}
		if !seeds {
			continue
		}
		sv := SlotView{SeedIdx: i, State: s.State, Alpha: s.effectiveAlpha(now, ramp), SeedID: s.SeedID, BlueprintID: s.BlueprintID,
			Transitions: append([]Transition{}, s.transitions...), History: append([]SeedHistory{}, sl.history...), Latest: s.latest}
		if s.kernel != "" {
			k, a := s.kernel, s.artifact
			sv.Kernel, sv.ArtifactID = &k, &a
		}
		v.Seeds = append(v.Seeds, sv)
	}
	return v
}

// layerViews lists the layers, by id, without their seeds.
func (b *layerBook) layerViews() []LayerView {
	b.mu.Lock()
	out := make([]LayerView, 0, len(b.layers))
	for _, l := range b.layers {
		out = append(out, l.view(false, time.Time{}, 0))
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].LayerID < out[j].LayerID })
	return out
}

// layerView renders one layer with its seeds.
func (b *layerBook) layerView(name string, now time.Time, ramp time.Duration) (LayerView, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.layers[name]
	if !ok {
		return LayerView{}, false
	}
	return l.view(true, now, ramp), true
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
	l, sl, err := b.slotLocked(k)
	if err != nil || sl.seed.kernel != kernel {
		return signalInputs{}, false
	}
	s := sl.seed
	in := signalInputs{layerID: l.id, chunkID: s.signals, state: s.State, total: len(l.slots)}
	// A layer's active seeds are its training or grafting ones, as
	// Seed.is_active says.
	for _, o := range l.slots {
		if o.seed.IsActive() {
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
	if _, sl, err := b.slotLocked(k); err == nil && sl.seed.kernel == kernel {
		sl.seed.signals++
		sl.seed.latest = &sig
	}
}

// latestSignals returns each seed's latest signal, by layer id then seed.
func (b *layerBook) latestSignals() []contracts.HealthSignal {
	b.mu.Lock()
	var out []contracts.HealthSignal
	for _, l := range b.layers {
		for _, sl := range l.slots {
			if sl.seed.latest != nil {
				out = append(out, *sl.seed.latest)
			}
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

// records returns the layers and every slot's seed for the State, both
// sorted by layer name (seeds then by index).
func (b *layerBook) records() ([]LayerRecord, []SeedRecord) {
	b.mu.Lock()
	layers := make([]LayerRecord, 0, len(b.layers))
	var seeds []SeedRecord
	for _, l := range b.layers {
		layers = append(layers, LayerRecord{Name: l.name, LayerID: l.id, IDDeclared: l.idDeclared, NumSeeds: len(l.slots),
			InputShape: slices.Clone(l.in), OutputShape: slices.Clone(l.out), DeclaredBy: l.by, Direct: l.direct})
		for i, sl := range l.slots {
			s := sl.seed
			seeds = append(seeds, SeedRecord{Layer: l.name, SeedIdx: i, Seed: s.Seed, Alpha: s.alpha, ArtifactID: s.artifact,
				History: slices.Clone(sl.history)})
		}
	}
	b.mu.Unlock()
	sort.Slice(layers, func(i, j int) bool { return layers[i].Name < layers[j].Name })
	sort.Slice(seeds, func(i, j int) bool {
		if seeds[i].Layer != seeds[j].Layer {
			return seeds[i].Layer < seeds[j].Layer
		}
		return seeds[i].SeedIdx < seeds[j].SeedIdx
	})
	return layers, seeds
}

// restore brings back saved layers and seeds, repairing what a damaged
// file gets wrong: a layer whose name or declaration is invalid, or whose
// id another layer took first (in name order), is dropped with a warning;
// seeds that do not validate, fall outside their layer or belong to no
// layer are dropped; alphas outside [0, 1] are clamped; a seed culled
// (as states written before slots record) goes to its slot's history.
// A layer declared before the restore keeps its declaration. Kernels
// are attached afterwards, by their loads.
func (b *layerBook) restore(layers []LayerRecord, seeds []SeedRecord, now time.Time, log *slog.Logger) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sorted := slices.Clone(layers)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, rec := range sorted {
		if _, known := b.layers[rec.Name]; known {
			continue // declared before the restore: keeps its declaration
		}
		id := rec.LayerID
		spec := LayerSpec{NumSeeds: rec.NumSeeds, LayerID: &id, InputShape: rec.InputShape, OutputShape: rec.OutputShape}
		err := validLayerName(rec.Name)
		if err == nil {
			err = spec.check()
		}
		if err == nil && rec.DeclaredBy == 0 {
			err = errors.New("declared_by missing")
		}
		if err == nil {
			_, err = b.newLayerLocked(rec.Name, spec, rec.DeclaredBy, rec.Direct, now)
		}
		if err != nil {
			log.Warn("state: layer not restored", slog.String("layer", rec.Name), slog.Int("layer_id", rec.LayerID), slog.Any("err", err))
			continue
		}
		b.layers[rec.Name].idDeclared = rec.IDDeclared
	}
	for _, rec := range seeds {
		err := rec.Seed.Validate()
		var sl *slot
		var l *layer
		if err == nil {
			l, sl, err = b.slotLocked(seedKey{rec.Layer, rec.SeedIdx})
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
		s := &seed{Seed: rec.Seed, alpha: alpha, alphaSetAt: now, artifact: rec.ArtifactID}
		s.LayerID, s.Position = l.id, rec.SeedIdx
		sl.seed, sl.history = s, slices.Clone(rec.History)
		if len(sl.history) > maxHistory {
			sl.history = sl.history[len(sl.history)-maxHistory:]
		}
		if s.State == contracts.SeedCulled {
			l.rotate(sl, seedKey{rec.Layer, rec.SeedIdx}, "culled before the restart", now)
		}
	}
}
