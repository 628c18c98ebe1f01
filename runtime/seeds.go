package runtime

import (
	"context"
	"math"
	"slices"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// Seeds lists every slot's seed, by layer id then seed index.
func (h *Host) Seeds() []SeedView { return h.book.seedViews(h.cfg.Now(), h.cfg.GraftingRamp) }

// Layers lists the layers, by id, without their seeds.
func (h *Host) Layers() []LayerView { return h.book.layerViews() }

// Layer returns one layer with its seeds, or false.
func (h *Host) Layer(name string) (LayerView, bool) {
	return h.book.layerView(name, h.cfg.Now(), h.cfg.GraftingRamp)
}

// Op is one control operation on a layer or a seed, whoever asks for it:
// the bus's control.kasmina.commands (through Run's command consumer) or
// a front end. The operations are DeclareLayer, RetireLayer, LoadKernel,
// UnloadKernel, SetSeedState and SetAlpha.
type Op interface {
	apply(ctx context.Context, h *Host) (Outcome, error)
	// outcome is the Outcome the op starts from: its event, command name
	// and target, and the artifact it names.
	outcome() Outcome
}

// Apply performs op and says what it did. The change is saved in the
// state store before Apply returns, or refused and undone. On failure the
// Outcome is the failure's (Event KernelLoadFailed for LoadKernel,
// CommandFailed for the others, with FailureReason and ErrorClass) and
// the error carries its failure class, from which a front end takes its
// status and the bus decides to dead-letter a command (a permanent class)
// or to leave it for another delivery.
//
// The seed operations (LoadKernel, UnloadKernel, SetSeedState, SetAlpha)
// publish their Outcome, success or failure, as an outcome event on
// telemetry.seed.health, answering the command ctx carries (WithOrigin;
// a fresh event_id when it carries none).
func (h *Host) Apply(ctx context.Context, op Op) (Outcome, error) {
	o, err := op.apply(ctx, h)
	if err != nil {
		err = classify(err, failure.Internal)
		o = failed(op.outcome(), err)
		if id, ok := h.book.layerID(o.Layer); ok {
			o.LayerID = id
		}
	}
	switch op.(type) {
	case DeclareLayer, RetireLayer:
	default:
		h.report(ctx, &o)
	}
	return o, err
}

// DeclareLayer declares a layer this host serves, so that commands for it
// are accepted before any kernel is loaded into it, or changes its
// declaration (see LayerSpec). The Outcome (Event LayerDeclared) carries
// its layer id and whether it was created; Unchanged when the layer was
// declared so already.
type DeclareLayer struct {
	Layer string
	Spec  LayerSpec
	// By says who declares it (default ByHTTP).
	By DeclaredBy
}

func (op DeclareLayer) outcome() Outcome {
	return Outcome{Event: LayerDeclared, Command: "declare_layer", Layer: op.Layer}
}

func (op DeclareLayer) apply(_ context.Context, h *Host) (Outcome, error) {
	by := op.By
	if by == 0 {
		by = ByHTTP
	}
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	d, undo, err := h.book.declare(op.Layer, op.Spec, by, h.cfg.Now())
	if err != nil {
		return Outcome{}, err
	}
	o := op.outcome()
	o.LayerID, o.Created, o.Unchanged = d.id, d.created, !d.changed
	if !d.changed {
		undo()
		return o, nil
	}
	return o, h.commit(undo, nil)
}

// RetireLayer retires a layer: its kernels are unloaded (their seeds
// culled) and its declaration forgotten.
type RetireLayer struct {
	Layer string
}

func (op RetireLayer) outcome() Outcome {
	return Outcome{Event: LayerRetired, Command: "retire_layer", Layer: op.Layer}
}

func (op RetireLayer) apply(ctx context.Context, h *Host) (Outcome, error) {
	o := op.outcome()
	o.LayerID, _ = h.book.layerID(op.Layer)
	h.changeMu.Lock()
	h.mu.Lock()
	names, undo, err := h.book.retire(op.Layer)
	if err != nil {
		h.mu.Unlock()
		h.changeMu.Unlock()
		return Outcome{}, err
	}
	var gone []*loaded
	for _, n := range names {
		if l, ok := h.kernels[n]; ok {
			gone = append(gone, l)
			delete(h.kernels, n)
		}
	}
	h.mu.Unlock()
	if err := h.saveChange(); err != nil {
		h.mu.Lock()
		for _, l := range gone {
			h.kernels[l.name] = l
		}
		undo()
		h.mu.Unlock()
		h.changeMu.Unlock()
		return Outcome{}, err
	}
	h.changeMu.Unlock()
	for _, l := range gone {
		h.let(ctx, l, "layer "+op.Layer+" retired")
	}
	return o, nil
}

// LoadKernel loads the kernel Artifact names into a seed: a kernel id,
// resolved through Urza, which then names the kernel, or a reference (a
// path, file://, http(s)://, s3://), in which case the kernel is named by
// its kernel_id, else by the reference's last path element. A kernel
// whose name another seed's kernel has is named name@layer.seed_idx (see
// runtime/oip/API.md). A dormant seed germinates; a seed holding another
// kernel swaps it for this one (requests already running finish on the
// old kernel); a seed holding this artifact already is left as it is
// (Unchanged).
type LoadKernel struct {
	Layer    string
	SeedIdx  int
	Artifact string
}

func (op LoadKernel) outcome() Outcome {
	return Outcome{Event: KernelLoaded, Command: oona.CommandLoadKernel, Layer: op.Layer, SeedIdx: op.SeedIdx, Artifact: op.Artifact}
}

func (op LoadKernel) apply(ctx context.Context, h *Host) (Outcome, error) {
	k := seedKey{op.Layer, op.SeedIdx}
	if err := h.targetSeed(k); err != nil {
		return Outcome{}, err
	}
	o := op.outcome()
	o.LayerID, _ = h.book.layerID(op.Layer)
	if kernel, ok := h.seedHolds(k, op.Artifact); ok {
		o.Kernel, o.Unchanged = kernel, true
		return o, nil
	}
	req := LoadRequest{Ref: op.Artifact, Layer: op.Layer, SeedIdx: op.SeedIdx, Replace: true, artifact: op.Artifact, declared: true}
	if !isReference(op.Artifact) {
		// A kernel id names the kernel: checked before Urza is asked.
		if err := validName(op.Artifact); err != nil {
			return Outcome{}, err
		}
		req.base = op.Artifact
	}
	v, err := h.Load(ctx, req)
	if err != nil {
		return Outcome{}, err
	}
	o.Kernel, o.LayerID, o.Unchanged = v.Name, v.LayerID, v.Unchanged
	return o, nil
}

// targetSeed checks that seed k exists: its layer declared (declaring it,
// with Config.AcceptAllLayers, when nobody has) and its index within the
// layer's slots.
func (h *Host) targetSeed(k seedKey) error {
	if _, ok := h.book.layerID(k.layer); !ok && h.cfg.AcceptAllLayers {
		h.changeMu.Lock()
		undo, err := h.book.ensure(k, implicit{by: ByCommand}, h.cfg.Now())
		err = h.commit(undo, err)
		h.changeMu.Unlock()
		if err != nil {
			return err
		}
	}
	_, _, err := h.book.seedState(k)
	return err
}

// seedHolds reports whether seed k holds the kernel that artifact (a
// load_kernel artifact_id) names, by what it was loaded from, by its
// reference or by its name, and which.
func (h *Host) seedHolds(k seedKey, artifact string) (string, bool) {
	kernel := h.book.kernelAt(k)
	if kernel == "" {
		return "", false
	}
	h.mu.RLock()
	l, ok := h.kernels[kernel]
	h.mu.RUnlock()
	return kernel, ok && (l.artifact == artifact || l.name == artifact || l.source == artifact || l.origin == artifact)
}

// UnloadKernel unloads the kernel a seed holds: the seed is culled and a
// fresh dormant seed takes its slot. A seed that holds none is left as it
// is (Unchanged).
type UnloadKernel struct {
	Layer   string
	SeedIdx int
}

func (op UnloadKernel) outcome() Outcome {
	return Outcome{Event: KernelUnloaded, Command: oona.CommandUnloadKernel, Layer: op.Layer, SeedIdx: op.SeedIdx}
}

func (op UnloadKernel) apply(ctx context.Context, h *Host) (Outcome, error) {
	k := seedKey{op.Layer, op.SeedIdx}
	if err := h.targetSeed(k); err != nil {
		return Outcome{}, err
	}
	o := op.outcome()
	o.LayerID, _ = h.book.layerID(op.Layer)
	kernel := h.book.kernelAt(k)
	if kernel == "" {
		o.Unchanged = true // nothing attached: already done
		return o, nil
	}
	o.Artifact = h.artifactOf(kernel)
	return o, h.unload(ctx, kernel, k, "kernel "+kernel+" unloaded")
}

// artifactOf is what a loaded kernel was loaded from.
func (h *Host) artifactOf(kernel string) string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if l, ok := h.kernels[kernel]; ok {
		return l.artifact
	}
	return ""
}

// SetSeedState moves a seed through its lifecycle under the contract's
// transition table; Why is recorded with the transition. Culling a seed
// unloads its kernel and leaves a fresh dormant seed in its slot, as
// UnloadKernel does.
type SetSeedState struct {
	Layer   string
	SeedIdx int
	State   contracts.SeedState
	Why     string
}

func (op SetSeedState) outcome() Outcome {
	return Outcome{Event: SeedStateChanged, Command: oona.CommandSetSeedState, Layer: op.Layer, SeedIdx: op.SeedIdx, To: op.State}
}

func (op SetSeedState) apply(ctx context.Context, h *Host) (Outcome, error) {
	k := seedKey{op.Layer, op.SeedIdx}
	if err := h.targetSeed(k); err != nil {
		return Outcome{}, err
	}
	if !slices.Contains(contracts.SeedStates, op.State) {
		return Outcome{}, failure.Errorf(failure.BadInput, "state %q is not a seed state", op.State)
	}
	o := op.outcome()
	o.LayerID, _ = h.book.layerID(op.Layer)
	from, kernel, err := h.book.seedState(k)
	if err != nil {
		return Outcome{}, err
	}
	if op.State == contracts.SeedCulled && kernel != "" && from.CanTransitionTo(contracts.SeedCulled) {
		o.From, o.Artifact = from, h.artifactOf(kernel)
		return o, h.unload(ctx, kernel, k, op.Why)
	}
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	from, undo, err := h.book.setState(k, op.State, op.Why, h.cfg.Now())
	if err := h.commit(undo, err); err != nil {
		return Outcome{}, err
	}
	o.From, o.Kernel = from, h.book.kernelAt(k)
	o.Artifact = h.artifactOf(o.Kernel)
	return o, nil
}

// SetAlpha sets a seed's blend factor, clamped to [0, 1] (the Outcome says
// so); while grafting the ramp restarts from it. A dormant seed keeps its
// alpha when a kernel germinates it.
type SetAlpha struct {
	Layer   string
	SeedIdx int
	Alpha   float64
}

func (op SetAlpha) outcome() Outcome {
	return Outcome{Event: SeedAlphaChanged, Command: oona.CommandSetAlpha, Layer: op.Layer, SeedIdx: op.SeedIdx}
}

func (op SetAlpha) apply(_ context.Context, h *Host) (Outcome, error) {
	k := seedKey{op.Layer, op.SeedIdx}
	if err := h.targetSeed(k); err != nil {
		return Outcome{}, err
	}
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	undo, err := h.book.setAlpha(k, op.Alpha, h.cfg.Now())
	if err := h.commit(undo, err); err != nil {
		return Outcome{}, err
	}
	a := math.Max(0, math.Min(1, op.Alpha))
	o := op.outcome()
	o.Alpha, o.Clamped, o.Kernel = a, a != op.Alpha, h.book.kernelAt(k)
	o.LayerID, _ = h.book.layerID(op.Layer)
	o.Artifact = h.artifactOf(o.Kernel)
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
