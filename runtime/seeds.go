package runtime

import (
	"context"
	"math"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Seeds lists every seed, by layer id then seed index.
func (h *Host) Seeds() []SeedView { return h.book.seedViews(h.cfg.Now(), h.cfg.GraftingRamp) }

// Layers lists the layer mapping, by id.
func (h *Host) Layers() []LayerView { return h.book.layerViews() }

// Op is one control operation on a layer or a seed, whoever asks for it:
// the bus's control.kasmina.commands (through Run's command consumer) or
// a front end. The operations are DeclareLayer, LoadKernel, UnloadKernel,
// SetSeedState and SetAlpha.
type Op interface {
	apply(ctx context.Context, h *Host) (Outcome, error)
}

// Apply performs op: the change is saved in the state store before Apply
// returns, or refused and undone. Its errors carry a failure class, from
// which the bus decides to dead-letter a command (a permanent class) or to
// leave it for another delivery.
func (h *Host) Apply(ctx context.Context, op Op) (Outcome, error) {
	o, err := op.apply(ctx, h)
	if err != nil {
		return o, classify(err, failure.Internal)
	}
	return o, nil
}

// Event says what an Apply did. Its String is the event_type Esper's
// outcome events use (#14 publishes them).
type Event uint8

// Events.
const (
	LayerDeclared Event = iota + 1
	KernelLoaded
	KernelUnloaded
	SeedStateChanged
	SeedAlphaChanged
)

func (e Event) String() string {
	switch e {
	case LayerDeclared:
		return "layer_declared"
	case KernelLoaded:
		return "kernel_load_success"
	case KernelUnloaded:
		return "kernel_unload_success"
	case SeedStateChanged:
		return "seed_state_changed"
	case SeedAlphaChanged:
		return "seed_alpha_changed"
	}
	return "none"
}

// Outcome is what an Apply did, for the answer to whoever asked.
type Outcome struct {
	Event   Event
	Layer   string
	LayerID int
	SeedIdx int
	// Kernel is the kernel the seed holds after the operation ("" when
	// none).
	Kernel string
	// From and To are the seed's states before and after (SetSeedState).
	From, To contracts.SeedState
	// Alpha is the seed's alpha as set, Clamped whether it was brought
	// into [0, 1] (SetAlpha).
	Alpha   float64
	Clamped bool
	// Unchanged is true when the operation found it done already (a
	// redelivered command, a layer declared before).
	Unchanged bool
}

// DeclareLayer declares a layer this host serves, so that commands for it
// are accepted before any kernel is loaded into it; the Outcome carries
// its layer id.
type DeclareLayer struct {
	Layer string
}

func (op DeclareLayer) apply(_ context.Context, h *Host) (Outcome, error) {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	o := Outcome{Event: LayerDeclared, Layer: op.Layer}
	if id, ok := h.book.layerID(op.Layer); ok {
		o.LayerID, o.Unchanged = id, true
		return o, nil
	}
	id, undo := h.book.declare(op.Layer)
	if err := h.commit(undo, nil); err != nil {
		return Outcome{}, err
	}
	o.LayerID = id
	return o, nil
}

// LoadKernel loads the kernel Artifact names into a seed: a kernel id,
// resolved through Urza, which then names the kernel, or a reference (a
// path, file://, http(s)://, s3://), in which case the kernel is named by
// its kernel_id, else by the reference's last path element. A seed that
// holds that kernel already is left as it is (Unchanged).
type LoadKernel struct {
	Layer    string
	SeedIdx  int
	Artifact string
}

func (op LoadKernel) apply(ctx context.Context, h *Host) (Outcome, error) {
	k := seedKey{op.Layer, op.SeedIdx}
	o := Outcome{Event: KernelLoaded, Layer: op.Layer, SeedIdx: op.SeedIdx}
	if kernel, ok := h.seedHolds(k, op.Artifact); ok {
		o.Kernel, o.Unchanged = kernel, true
		o.LayerID, _ = h.book.layerID(op.Layer)
		return o, nil
	}
	req := LoadRequest{Ref: op.Artifact, Layer: op.Layer, SeedIdx: op.SeedIdx}
	if !isReference(op.Artifact) {
		req.Name = op.Artifact // checked before Urza is asked
	}
	v, err := h.Load(ctx, req)
	if err != nil {
		return Outcome{}, err
	}
	o.Kernel, o.LayerID = v.Name, v.LayerID
	return o, nil
}

// seedHolds reports whether seed k holds the kernel that artifact (a
// load_kernel artifact_id) names, by name (a kernel id) or by the
// reference it was loaded from, and which.
func (h *Host) seedHolds(k seedKey, artifact string) (string, bool) {
	kernel := h.book.kernelAt(k)
	if kernel == "" {
		return "", false
	}
	h.mu.RLock()
	l, ok := h.kernels[kernel]
	h.mu.RUnlock()
	return kernel, ok && (l.name == artifact || l.source == artifact || l.origin == artifact)
}

// UnloadKernel unloads the kernel a seed holds (the seed is culled); a
// seed that holds none is left as it is (Unchanged).
type UnloadKernel struct {
	Layer   string
	SeedIdx int
}

func (op UnloadKernel) apply(ctx context.Context, h *Host) (Outcome, error) {
	o := Outcome{Event: KernelUnloaded, Layer: op.Layer, SeedIdx: op.SeedIdx}
	o.LayerID, _ = h.book.layerID(op.Layer)
	kernel := h.book.kernelAt(seedKey{op.Layer, op.SeedIdx})
	if kernel == "" {
		o.Unchanged = true // nothing attached: already done
		return o, nil
	}
	return o, h.Unload(ctx, kernel)
}

// SetSeedState moves a seed through its lifecycle under the contract's
// transition table; Why is recorded with the transition.
type SetSeedState struct {
	Layer   string
	SeedIdx int
	State   contracts.SeedState
	Why     string
}

func (op SetSeedState) apply(_ context.Context, h *Host) (Outcome, error) {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	k := seedKey{op.Layer, op.SeedIdx}
	from, undo, err := h.book.setState(k, op.State, op.Why, h.cfg.Now())
	if err := h.commit(undo, err); err != nil {
		return Outcome{}, err
	}
	o := Outcome{Event: SeedStateChanged, Layer: op.Layer, SeedIdx: op.SeedIdx, From: from, To: op.State, Kernel: h.book.kernelAt(k)}
	o.LayerID, _ = h.book.layerID(op.Layer)
	return o, nil
}

// SetAlpha sets a seed's blend factor, clamped to [0, 1] (the Outcome says
// so); while grafting the ramp restarts from it.
type SetAlpha struct {
	Layer   string
	SeedIdx int
	Alpha   float64
}

func (op SetAlpha) apply(_ context.Context, h *Host) (Outcome, error) {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	k := seedKey{op.Layer, op.SeedIdx}
	undo, err := h.book.setAlpha(k, op.Alpha, h.cfg.Now())
	if err := h.commit(undo, err); err != nil {
		return Outcome{}, err
	}
	a := math.Max(0, math.Min(1, op.Alpha))
	o := Outcome{Event: SeedAlphaChanged, Layer: op.Layer, SeedIdx: op.SeedIdx, Alpha: a, Clamped: a != op.Alpha, Kernel: h.book.kernelAt(k)}
	o.LayerID, _ = h.book.layerID(op.Layer)
	return o, nil
}

// commit saves a change made (err nil) or returns err; a change that
// cannot be saved is undone. The caller holds changeMu.
func (h *Host) commit(undo func(), err error) error {
	if err != nil {
		return err
	}
	if err := h.saveChange(); err != nil {
		undo()
		return err
	}
	return nil
}
