package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/cache"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/health"
	"github.com/esper/kasmina-host/runtime/placement"
)

// loaded is one kernel the host serves.
type loaded struct {
	name     string
	kernel   *kernels.Kernel
	handle   *cache.Handle[*parsed] // pins the parsed kernel in the cache
	observed int64                  // bytes its load was seen to take
	meta     contracts.KernelMetadata
	compiled *contracts.CompiledKernel // nil when loaded from a bare artifact
	source   string                    // where this process read the bytes from
	origin   string                    // where they were first loaded from, when source holds a copy
	fallback placement.Fallback
	loadedAt time.Time
	breaker  *admission.Breaker
	window   *health.Window
	expected time.Duration // declared latency, for the health score
	obs      atomic.Pointer[kernelObservers]

	// seed is the seed this kernel serves (its own seed when served
	// directly); guarded by Host.mu.
	seed seedKey

	// route is how requests run, set with the decision (setDecision) and
	// read without a lock on the request path.
	route    atomic.Pointer[execRoute]
	mu       sync.Mutex // guards decision and moves
	decision placement.Decision
	moves    []Move
	// gate admits requests until Unload closes it; Unload returns only
	// once the requests it admitted have left.
	gate *gate
	// maxBatch is the largest batch one request may have: the host's
	// MaxBatch, lowered so that the output and activations stay within
	// MaxOutputBytes.
	maxBatch int

	calls, failures atomic.Int64
	shape1          []int // [1, *output_shape], shared by batch-1 results
	inShape         []int // input shape without batch (read-only)
}

// setDecision records a placement and the route its requests take,
// derived once here rather than on every request.
func (l *loaded) setDecision(dec placement.Decision) {
	r := routeFor(&dec)
	l.mu.Lock()
	l.decision = dec
	l.route.Store(r)
	l.mu.Unlock()
}

// outShape is the output shape for a batch; batch 1's is shared.
func (l *loaded) outShape(batch int) []int {
	if batch == 1 && l.shape1 != nil {
		return l.shape1
	}
	return append([]int{batch}, l.kernel.OutputShape()...)
}

// Move records a re-placement.
type Move struct {
	At     time.Time `json:"at"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
}

// LoadRequest describes a kernel to load.
type LoadRequest struct {
	// Name is the model name; default: the kernel id (compiled document,
	// embedded metadata), else the artifact's file name.
	Name string
	// Data holds the artifact bytes. When nil, the artifact is fetched
	// from Ref (or Compiled.BinaryRef) through the host's Fetcher; with
	// Data, Ref says where the bytes were read from.
	Data []byte
	Ref  string
	// Origin, when Data is a kept copy (a restore from the state
	// directory), is the reference the kernel was first loaded from.
	Origin string
	// Compiled is the CompiledKernel document that points at the artifact,
	// when there is one: its metadata's checksum is verified and its
	// device requirements drive placement.
	Compiled *contracts.CompiledKernel
	// Fallback overrides the host's CPU fallback policy for this kernel.
	Fallback *placement.Fallback
	// Layer and SeedIdx attach the kernel to that seed (load_kernel);
	// empty Layer serves it directly as a seed of its own.
	Layer   string
	SeedIdx int
	// Replace unloads a kernel of the same name first.
	Replace bool
	// batch leaves saving the state to the caller, which saves it
	// once for a batch of loads (the repository scan).
	batch bool
}

// KernelView is what the API shows of a loaded kernel. Source names the
// artifact with its credentials redacted (source.Redact).
type KernelView struct {
	Name     string `json:"name"`
	KernelID string `json:"kernel_id"`
	// Source is where this process read the kernel's bytes from: the
	// reference it was loaded from, or its copy in the state directory
	// after a restart, in which case OriginalSource is the reference it
	// was first loaded from.
	Source         string                   `json:"source,omitempty"`
	OriginalSource string                   `json:"original_source,omitempty"`
	SHA256         string                   `json:"sha256"`
	InputShape     []int                    `json:"input_shape"`
	OutputShape    []int                    `json:"output_shape"`
	ParameterCount int                      `json:"parameter_count"`
	Requirements   []string                 `json:"device_requirements"`
	Placement      PlacementView            `json:"placement"`
	ExecutedOn     string                   `json:"executed_on"`
	Executor       string                   `json:"executor"`
	Degraded       bool                     `json:"degraded"`
	DegradedReason string                   `json:"degraded_reason,omitempty"`
	Fallback       string                   `json:"cpu_fallback"`
	Layer          string                   `json:"layer"`
	LayerID        int                      `json:"layer_id"`
	SeedIdx        int                      `json:"seed_idx"`
	Breaker        admission.BreakerState   `json:"breaker"`
	BreakerReason  string                   `json:"breaker_reason,omitempty"`
	MaxBatch       int                      `json:"max_batch"`
	Calls          int64                    `json:"calls"`
	Failures       int64                    `json:"failures"`
	Moves          []Move                   `json:"moves"`
	Memory         kernels.MemoryCheck      `json:"memory_check"`
	ObservedMiB    float64                  `json:"observed_load_mib"`
	Metadata       contracts.KernelMetadata `json:"metadata"`
	LoadedAt       time.Time                `json:"loaded_at"`
	// Unchanged is true when Load found this kernel already loaded with
	// the same content and target and changed nothing (HTTP answers 200,
	// not 201).
	Unchanged bool `json:"-"`
}

// PlacementView is a placement decision as the API and `place` show it.
type PlacementView struct {
	Device         string          `json:"device"`
	UUID           string          `json:"uuid"`
	Kind           string          `json:"kind,omitempty"`
	EstimateMiB    float64         `json:"estimate_mib"`
	EstimateSource string          `json:"estimate_source,omitempty"`
	ContractMiB    float64         `json:"contract_estimate_mib"`
	FloorMiB       float64         `json:"floor_estimate_mib"`
	Batch          int             `json:"batch"`
	FreeBeforeMiB  float64         `json:"effective_free_before_mib"`
	FreeAfterMiB   float64         `json:"effective_free_after_mib"`
	Degraded       bool            `json:"degraded"`
	Fallback       bool            `json:"fallback"`
	FallbackReason string          `json:"fallback_reason,omitempty"`
	Reason         string          `json:"reason"`
	Candidates     []CandidateView `json:"candidates"`
}

// CandidateView is one device considered.
type CandidateView struct {
	Device           string  `json:"device"`
	UUID             string  `json:"uuid,omitempty"`
	Kind             string  `json:"kind"`
	Fits             bool    `json:"fits"`
	Reason           string  `json:"reason"`
	FreeMiB          float64 `json:"free_mib"`
	ReservedMiB      float64 `json:"reserved_mib"`
	HeadroomMiB      float64 `json:"headroom_mib"`
	EffectiveFreeMiB float64 `json:"effective_free_mib"`
}

// ViewDecision renders a decision for the API.
func ViewDecision(d *placement.Decision, req placement.Request, batch int) PlacementView {
	v := PlacementView{
		Device: d.Device, UUID: d.UUID, EstimateMiB: d.EstimateMiB, EstimateSource: d.EstimateSource,
		ContractMiB: req.ContractMiB, FloorMiB: req.FloorMiB, Batch: batch,
		FreeBeforeMiB: d.EffectiveFreeBeforeMiB, FreeAfterMiB: d.EffectiveFreeAfterMiB,
		Degraded: d.Degraded, Fallback: d.Fallback, FallbackReason: d.FallbackReason(),
		Reason: d.Reason(), Candidates: make([]CandidateView, len(d.Candidates)),
	}
	if d.Placed() {
		v.Kind = d.Kind.String()
	}
	for i := range d.Candidates {
		c := &d.Candidates[i]
		v.Candidates[i] = CandidateView{Device: c.Device, UUID: c.UUID, Kind: c.Kind, Fits: c.Fits, Reason: c.Reason(),
			FreeMiB: c.FreeMiB, ReservedMiB: c.ReservedMiB, HeadroomMiB: c.HeadroomMiB, EffectiveFreeMiB: c.EffectiveFreeMiB}
	}
	return v
}

// PlacementRequest builds the placement request for a kernel's metadata at
// a batch size. floorMiB is the loaded module's weights-plus-activations
// estimate; without a loaded module (a dry run from a document) it is
// parameter_count float32 weights plus float32 input and output
// activations for the batch.
func PlacementRequest(md *contracts.KernelMetadata, batch int, floorMiB float64, fb placement.Fallback) placement.Request {
	if floorMiB <= 0 {
		floorMiB = DocumentFloorMiB(md, batch)
	}
	return placement.Request{
		Kernel:       md.KernelID,
		Requirements: md.DeviceRequirements,
		ContractMiB:  md.GetMemoryEstimate(batch),
		FloorMiB:     floorMiB,
		Fallback:     fb,
	}
}

// DocumentFloorMiB is the memory floor knowable from metadata alone:
// float32 weights plus the batch's float32 input and output.
func DocumentFloorMiB(md *contracts.KernelMetadata, batch int) float64 {
	prod := func(s []int) float64 {
		p := 1.0
		for _, v := range s {
			p *= float64(v)
		}
		return p
	}
	bytes := 4 * (float64(md.ParameterCount) + float64(batch)*(prod(md.InputShape)+prod(md.OutputShape)))
	return bytes / (1 << 20)
}

// Plan is a dry run: where would a kernel with this metadata go at this
// batch size, given the devices now and the host's reservations? fb nil
// uses the host's policy.
func (h *Host) Plan(md *contracts.KernelMetadata, batch int, fb *placement.Fallback) (PlacementView, error) {
	if batch <= 0 {
		batch = h.cfg.PlacementBatch
	}
	policy := h.cfg.Fallback
	if fb != nil {
		policy = *fb
	}
	req := PlacementRequest(md, batch, 0, policy)
	dec, err := h.planner.Plan(req, devices(h.inv.Snapshot()), h.ledger)
	if err != nil {
		return PlacementView{}, failure.Wrap(failure.BadInput, err)
	}
	return ViewDecision(&dec, req, batch), nil
}

// Load loads, places and starts serving a kernel. Its errors carry a
// failure class (see classify.go); a name given in the request is checked
// before anything is fetched. When the state store cannot save the change,
// the kernel is not kept: Load returns the store's error and the host is
// as it was.
func (h *Host) Load(ctx context.Context, req LoadRequest) (KernelView, error) {
	start := h.cfg.Now()
	if req.Name != "" {
		if err := validName(req.Name); err != nil {
			return KernelView{}, err
		}
	}
	if req.SeedIdx < 0 {
		return KernelView{}, failure.Errorf(failure.BadInput, "seed_idx %d is negative", req.SeedIdx)
	}
	data := req.Data
	source := req.Ref
	if req.Compiled == nil && data == nil && source != "" && !isReference(source) {
		if h.resolve == nil {
			return KernelView{}, failure.Errorf(failure.BadInput, "artifact %q is neither a path nor a URL, and no kernel library (Urza) is configured", redactRef(source))
		}
		ck, err := h.resolve.Resolve(ctx, source)
		if err != nil {
			err = classify(err, failure.Unavailable)
			h.recordFailure(req.Name, err)
			return KernelView{}, err
		}
		req.Compiled = ck
		source = ""
	}
	var md *contracts.KernelMetadata
	checksum := ""
	if req.Compiled != nil {
		if err := req.Compiled.Validate(); err != nil {
			return KernelView{}, failure.Errorf(failure.BadInput, "compiled kernel document: %w", err)
		}
		md = &req.Compiled.Metadata
		if md.Checksum != nil {
			checksum = *md.Checksum
		}
		if v, _ := req.Compiled.ValidationResults.Get("metadata_from"); v == "artifact" {
			// Urza's flat record: the artifact's embedded metadata
			// describes the kernel; the checksum is verified while fetching.
			md = nil
		}
		if source == "" {
			source = req.Compiled.BinaryRef
		}
	}
	if data == nil {
		if source == "" {
			return KernelView{}, failure.Errorf(failure.BadInput, "no artifact: give bytes, a reference or a document with binary_ref")
		}
		if h.fetch == nil {
			return KernelView{}, failure.Errorf(failure.Refused, "cannot fetch %q: no artifact source is configured", redactRef(source))
		}
		var err error
		data, err = h.fetch.Fetch(ctx, source, checksum)
		if err != nil {
			// The sources' errors name the reference already.
			err = classify(err, failure.Unavailable)
			h.recordFailure(req.Name, err)
			return KernelView{}, err
		}
	}
	handle, err := h.loadCached(ctx, data, md)
	if err != nil {
		what := source
		if what == "" {
			what = "the artifact"
		}
		err = classify(fmt.Errorf("%s: %w", what, err), failure.Malformed)
		h.recordFailure(req.Name, err)
		return KernelView{}, err
	}
	k := handle.Value().kernel
	observed := handle.Value().observedBytes
	ok := false
	defer func() {
		if !ok {
			handle.Release()
		}
	}()
	meta := k.Metadata()
	if meta == nil {
		// A bare artifact without embedded metadata: describe it from the
		// module itself.
		m := contracts.NewKernelMetadata(k.ID(), "", k.ID())
		m.InputShape, m.OutputShape, m.ParameterCount = k.InputShape(), k.OutputShape(), k.ParameterCount()
		m.MemoryFootprintMB = k.MemoryEstimateMiB(32)
		meta = &m
	}
	if err := kernels.CheckTarget(meta); err != nil {
		return KernelView{}, classify(err, failure.Refused)
	}
	name := req.Name
	if name == "" {
		name = defaultName(meta.KernelID, source, k.ID())
	}
	fb := h.cfg.Fallback
	flag, _ := meta.OptimizationFlags.Get("cpu_fallback")
	if v, ok := flag.(string); ok {
		// A kernel may carry its own policy in optimization_flags.
		f, err := placement.ParseFallback(v)
		if err != nil {
			return KernelView{}, failure.Errorf(failure.BadInput, "kernel %q: optimization_flags.cpu_fallback: %w", name, err)
		}
		fb = f
	}
	if req.Fallback != nil {
		fb = *req.Fallback
	}
	l := &loaded{
		name:     name,
		kernel:   k,
		meta:     *meta,
		compiled: req.Compiled,
		source:   source,
		origin:   req.Origin,
		fallback: fb,
		loadedAt: h.cfg.Now(),
		breaker:  admission.NewBreaker(h.cfg.BreakerThreshold, h.cfg.BreakerCooldown, h.cfg.Now),
		window:   health.NewWindow(k.OutputSize()),
		expected: health.ExpectedLatency(meta.PerformanceProfile),
		shape1:   append([]int{1}, k.OutputShape()...),
		inShape:  k.InputShape(),
		observed: observed,
		gate:     newGate(),
	}
	if l.maxBatch = min(h.cfg.MaxBatch, k.MaxBatchWithin(h.cfg.MaxOutputBytes)); l.maxBatch < 1 {
		return KernelView{}, failure.Errorf(failure.TooLarge, "kernel %q needs %s for one sample's output and intermediate activations, over the host's limit of %s per request",
			name, byteSize(k.RunBytes(1)), byteSize(h.cfg.MaxOutputBytes))
	}
	if !req.Replace {
		if v, done, err := h.alreadyLoaded(name, l, req); done {
			return v, err
		}
	}
	if err := ctx.Err(); err != nil {
		return KernelView{}, fmt.Errorf("loading kernel %q: %w", name, err)
	}

	if req.Replace {
		if err := h.Unload(ctx, name); err != nil && !failure.Is(err, failure.NotFound) {
			return KernelView{}, err
		}
	}
	if err := h.keepArtifact(data); err != nil {
		return KernelView{}, failure.Errorf(failure.Unavailable, "keeping kernel %q for restarts: %w", name, err)
	}
	preq := h.placementRequest(l)
	dec, err := h.ledger.PlaceAndReserve(h.planner, name, preq, devices(h.inv.Snapshot()))
	if err != nil {
		if errors.Is(err, placement.ErrAlreadyReserved) {
			// Another load of the same name got there first.
			return h.loadRace(name, l, req)
		}
		if errors.Is(err, placement.ErrNoPlacement) {
			err = failure.Errorf(failure.Refused, "kernel %q: %s", name, dec.Reason())
		} else {
			err = failure.Errorf(failure.BadInput, "kernel %q: %w", name, err)
		}
		h.recordFailure(name, err)
		return KernelView{}, err
	}
	l.setDecision(dec)

	// Commit: serve the kernel and save, or undo both. The change lock
	// makes the store save the changes in the order they were made.
	h.changeMu.Lock()
	h.mu.Lock()
	if err := ctx.Err(); err != nil {
		// The caller's deadline passed: nothing is committed (an HTTP load
		// answers 504 and the kernel is not loaded).
		h.mu.Unlock()
		h.changeMu.Unlock()
		h.ledger.Release(name)
		return KernelView{}, fmt.Errorf("loading kernel %q: %w", name, err)
	}
	if _, dup := h.kernels[name]; dup {
		h.mu.Unlock()
		h.changeMu.Unlock()
		h.ledger.Release(name)
		return h.loadRace(name, l, req)
	}
	layer, idx := req.Layer, req.SeedIdx
	if layer == "" {
		layer, idx = name, 0
	}
	undo, err := h.book.attach(seedKey{layer, idx}, name, meta.BlueprintID, h.cfg.Now())
	if err != nil {
		h.mu.Unlock()
		h.changeMu.Unlock()
		h.ledger.Release(name)
		return KernelView{}, err
	}
	l.seed = seedKey{layer, idx}
	l.handle = handle
	h.kernels[name] = l
	failedBefore, hadFailed := h.failed[name]
	h.forgetFailureLocked(name)
	h.mu.Unlock()
	var saveErr error
	if !req.batch { // a batch is saved by its caller, once
		saveErr = h.saveChange()
	}
	if saveErr != nil {
		h.mu.Lock()
		delete(h.kernels, name)
		undo()
		if hadFailed {
			h.failed[name] = failedBefore
			h.failedOrder = append(h.failedOrder, name)
		}
		h.mu.Unlock()
		h.changeMu.Unlock()
		h.ledger.Release(name)
		return KernelView{}, saveErr
	}
	ok = true
	l.obs.Store(h.metrics.kernel(name, dec.Device, l.route.Load().exec.Name()))
	h.changeMu.Unlock()

	h.metrics.loadDuration.Observe(h.cfg.Now().Sub(start).Seconds())
	h.metrics.setReserved(name, dec.Device, dec.EstimateMiB)
	h.metrics.observeMemory(name, dec.EstimateMiB, observed, k.MemoryCheck())
	if dec.Fallback {
		h.metrics.fallbacks.WithLabelValues(name, dec.Shortfall.Label()).Inc()
	}
	h.log.Info("kernel loaded", slog.String("kernel", name), slog.String("placed_on", dec.Device),
		slog.String("executed_on", l.route.Load().exec.Device()), slog.Bool("degraded", dec.Degraded), slog.String("reason", dec.Reason()))
	return h.view(l), nil
}

func (h *Host) placementRequest(l *loaded) placement.Request {
	return PlacementRequest(&l.meta, h.cfg.PlacementBatch, l.kernel.MemoryEstimateMiB(h.cfg.PlacementBatch), l.fallback)
}

// Bounds on what the host remembers of failed loads (the repository
// index and /v1/kernels list them): the most recent maxFailedLoads names,
// each reason cut to maxFailureReason bytes. A name that could never be
// loaded (validName) is not remembered at all, so a client cannot fill
// the index with long names.
const (
	maxFailedLoads   = 256
	maxFailureReason = 1024
)

func (h *Host) recordFailure(name string, err error) {
	if name == "" || validName(name) != nil {
		return
	}
	reason := err.Error()
	if len(reason) > maxFailureReason {
		cut := maxFailureReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "…"
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.failed[name]; ok {
		h.forgetFailureLocked(name) // it moves to the end: the newest
	}
	h.failed[name] = reason
	h.failedOrder = append(h.failedOrder, name)
	for len(h.failedOrder) > maxFailedLoads {
		delete(h.failed, h.failedOrder[0])
		h.failedOrder = h.failedOrder[1:]
	}
}

// forgetFailureLocked drops a remembered failed load; h.mu is held.
func (h *Host) forgetFailureLocked(name string) {
	if _, ok := h.failed[name]; !ok {
		return
	}
	delete(h.failed, name)
	if i := slices.Index(h.failedOrder, name); i >= 0 {
		h.failedOrder = slices.Delete(h.failedOrder, i, i+1)
	}
}

// RecordLoadFailure lists a kernel that could not be loaded (for the
// repository index), with the reason.
func (h *Host) RecordLoadFailure(name string, err error) { h.recordFailure(name, err) }

// validName keeps model names usable in URLs and metric labels.
func validName(name string) error {
	if len(name) > maxNameBytes {
		shown := redactRef(name) // a reference used as a name may carry credentials
		return failure.Errorf(failure.BadInput, "kernel name %q… is %d bytes, longer than %d", shown[:min(len(shown), 32)], len(name), maxNameBytes)
	}
	for _, r := range name {
		if r < 0x20 || r == '/' || r == '?' || r == '#' || r == 0x7f {
			// A reference used as a name (a bus artifact_id) may carry
			// credentials: the message names it redacted.
			return failure.Errorf(failure.BadInput, "kernel name %q: no control characters, '/', '?' or '#'", redactRef(name))
		}
	}
	return nil
}

// maxNameBytes is the longest kernel name.
const maxNameBytes = 255

// defaultName names a kernel loaded without a name: its kernel_id when that
// is a valid name, else the last element of the reference it came from
// (without .safetensors) made valid, else id (the artifact's own id, by
// content hash).
func defaultName(kernelID, ref, id string) string {
	if kernelID != "" && validName(kernelID) == nil {
		return kernelID
	}
	if n := nameFromRef(ref); n != "" {
		return n
	}
	return id
}

// nameFromRef is the last path element of a reference (a path, a file://,
// http(s):// or s3:// URL; the query dropped) without the .safetensors
// extension, with every character a name may not hold replaced by '_' and
// cut to maxNameBytes. It is "" when nothing is left.
func nameFromRef(ref string) string {
	if _, rest, ok := strings.Cut(ref, "://"); ok {
		// Past the scheme and the host (or bucket): the path.
		_, p, hasPath := strings.Cut(rest, "/")
		if !hasPath {
			return ""
		}
		ref = "/" + p
	}
	if i := strings.IndexAny(ref, "?#"); i >= 0 {
		ref = ref[:i]
	}
	ref = strings.TrimRight(ref, "/")
	base := strings.TrimSuffix(path.Base(ref), ".safetensors")
	if base == "." || base == ".." || base == "/" || strings.HasSuffix(base, ":") {
		return ""
	}
	var b strings.Builder
	for _, r := range base {
		if r < 0x20 || r == '/' || r == '?' || r == '#' || r == 0x7f || r == utf8.RuneError {
			r = '_'
		}
		if b.Len()+utf8.RuneLen(r) > maxNameBytes {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Unload stops serving a kernel once its in-flight requests finish, detaches
// it from its seed and releases its reservation. When the state store
// cannot save that, the kernel keeps serving and Unload returns its error.
func (h *Host) Unload(ctx context.Context, name string) error {
	h.changeMu.Lock()
	h.mu.Lock()
	l, ok := h.kernels[name]
	if !ok {
		_, failed := h.failed[name]
		h.forgetFailureLocked(name)
		h.mu.Unlock()
		h.changeMu.Unlock()
		if failed {
			return nil
		}
		return failure.Errorf(failure.NotFound, "no kernel %q is loaded", name)
	}
	delete(h.kernels, name)
	undo := h.book.detach(l.seed, name, h.cfg.Now())
	h.mu.Unlock()
	if err := h.saveChange(); err != nil {
		h.mu.Lock()
		h.kernels[name] = l
		undo()
		h.mu.Unlock()
		h.changeMu.Unlock()
		return err
	}
	h.changeMu.Unlock()

	select {
	case <-l.gate.close():
	case <-ctx.Done():
		h.log.Warn("unload did not wait for in-flight requests", slog.String("kernel", name), slog.Any("err", ctx.Err()))
	}
	h.ledger.Release(name)
	l.handle.Release() // the parsed kernel stays cached until evicted
	l.mu.Lock()
	dev := l.decision.Device
	l.mu.Unlock()
	h.metrics.deleteKernel(name, dev)
	h.log.Info("kernel unloaded", slog.String("kernel", name))
	return nil
}

// Kernels lists the loaded kernels, sorted by name.
func (h *Host) Kernels() []KernelView {
	h.mu.RLock()
	ls := make([]*loaded, 0, len(h.kernels))
	for _, l := range h.kernels {
		ls = append(ls, l)
	}
	h.mu.RUnlock()
	sort.Slice(ls, func(i, j int) bool { return ls[i].name < ls[j].name })
	out := make([]KernelView, len(ls))
	for i, l := range ls {
		out[i] = h.view(l)
	}
	return out
}

// Kernel returns one loaded kernel.
func (h *Host) Kernel(name string) (KernelView, bool) {
	h.mu.RLock()
	l, ok := h.kernels[name]
	h.mu.RUnlock()
	if !ok {
		return KernelView{}, false
	}
	return h.view(l), true
}

// FailedLoads lists the kernels that could not be loaded, with the reason.
func (h *Host) FailedLoads() map[string]string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make(map[string]string, len(h.failed))
	for k, v := range h.failed {
		out[k] = v
	}
	return out
}

func (h *Host) view(l *loaded) KernelView {
	l.mu.Lock()
	dec := l.decision
	rt := l.route.Load()
	moves := append([]Move(nil), l.moves...)
	l.mu.Unlock()
	layerID, ok := h.book.layerID(l.seed.layer)
	if !ok {
		layerID = -1
	}
	v := KernelView{
		Name: l.name, KernelID: l.meta.KernelID, Source: redactRef(l.source), OriginalSource: redactRef(l.origin), SHA256: l.kernel.SHA256(),
		InputShape: l.kernel.InputShape(), OutputShape: l.kernel.OutputShape(), ParameterCount: l.kernel.ParameterCount(),
		Requirements: l.meta.DeviceRequirements,
		Placement:    ViewDecision(&dec, h.placementRequest(l), h.cfg.PlacementBatch),
		ExecutedOn:   rt.exec.Device(), Executor: rt.exec.Name(),
		Fallback: l.fallback.String(),
		Layer:    l.seed.layer, LayerID: layerID, SeedIdx: l.seed.idx,
		Calls: l.calls.Load(), Failures: l.failures.Load(), MaxBatch: l.maxBatch,
		Moves: moves, Memory: l.kernel.MemoryCheck(), ObservedMiB: float64(l.observed) / (1 << 20),
		Metadata: l.meta, LoadedAt: l.loadedAt,
	}
	if v.Requirements == nil {
		v.Requirements = []string{}
	}
	if v.Moves == nil {
		v.Moves = []Move{}
	}
	v.Degraded, v.DegradedReason = rt.degraded != "", rt.degraded
	v.Breaker, v.BreakerReason = l.breaker.Status()
	return v
}

// Replace moves kernels off devices that can no longer hold them: devices
// that turned unhealthy or invisible, and devices whose live free memory
// dropped below the host's outstanding reservations plus headroom. Each
// move is planned without the device being left and recorded. It returns
// the moves made.
func (h *Host) Replace() []Move {
	devs := devices(h.inv.Snapshot())
	h.mu.RLock()
	ls := make([]*loaded, 0, len(h.kernels))
	for _, l := range h.kernels {
		ls = append(ls, l)
	}
	h.mu.RUnlock()
	sort.Slice(ls, func(i, j int) bool { return ls[i].loadedAt.After(ls[j].loadedAt) }) // newest first

	var moves []Move
	for _, l := range ls {
		l.mu.Lock()
		cur := l.decision
		l.mu.Unlock()
		cause, why := h.planner.MustLeave(cur.Device, devs, h.ledger)
		if cause == placement.Stay {
			continue
		}
		// Plan without the device being left.
		others := make([]placement.Device, 0, len(devs))
		for _, o := range devs {
			if o.Name != cur.Device {
				others = append(others, o)
			}
		}
		dec, err := h.ledger.Move(h.planner, l.name, h.placementRequest(l), others)
		if err != nil {
			h.log.Error("kernel cannot be re-placed; it keeps executing on the CPU", slog.String("kernel", l.name),
				slog.String("from", cur.Device), slog.String("why", why), slog.Any("err", err))
			continue
		}
		mv := Move{At: h.cfg.Now(), From: cur.Device, To: dec.Device, Reason: why}
		l.setDecision(dec)
		l.mu.Lock()
		l.moves = append(l.moves, mv)
		if len(l.moves) > 32 {
			l.moves = l.moves[len(l.moves)-32:]
		}
		l.mu.Unlock()
		h.metrics.replacements.WithLabelValues(mv.From, mv.To, cause.Label()).Inc()
		h.metrics.moveKernel(l.name, cur.Device, dec.Device, dec.EstimateMiB)
		l.obs.Store(h.metrics.kernel(l.name, dec.Device, l.route.Load().exec.Name()))
		if dec.Fallback {
			h.metrics.fallbacks.WithLabelValues(l.name, dec.Shortfall.Label()).Inc()
		}
		h.log.Warn("kernel re-placed", slog.String("kernel", l.name), slog.String("from", mv.From),
			slog.String("to", mv.To), slog.String("reason", why))
		moves = append(moves, mv)
	}
	if len(moves) > 0 {
		h.changeMu.Lock()
		if err := h.saveChange(); err != nil {
			h.log.Error("re-placements not saved", slog.Int("moves", len(moves)), slog.Any("err", err))
		}
		h.changeMu.Unlock()
	}
	return moves
}

// loadCached parses and validates an artifact, sharing the parsed kernel
// with earlier loads of the same bytes under the same metadata. The handle
// pins the entry until released.
func (h *Host) loadCached(ctx context.Context, data []byte, md *contracts.KernelMetadata) (*cache.Handle[*parsed], error) {
	sum := sha256.Sum256(data)
	key := hex.EncodeToString(sum[:])
	if md != nil {
		// The same bytes under other metadata are validated again.
		mdSum := sha256.Sum256(md.AppendJSON(nil))
		key += ":" + hex.EncodeToString(mdSum[:8])
	}
	hd, err := h.cache.GetOrLoad(ctx, key, func(ctx context.Context, _ string) (*parsed, int64, error) {
		before := allocatedBytes()
		k, err := kernels.Load(data, kernels.LoadOptions{Metadata: md, Logger: h.log})
		if err != nil {
			return nil, 0, &parseError{err}
		}
		observed := max(int64(allocatedBytes()-before), 0)
		// The cache is sized by what the entry keeps (the file or the
		// weights), not by observed, which counts parse garbage and
		// anything else the process allocated meanwhile.
		size := max(int64(len(data)), 4*int64(k.ParameterCount()))
		return &parsed{kernel: k, observedBytes: observed}, size, nil
	})
	// The cache's wrapping names its key (a hash): the loader's own error
	// says what is wrong with the bytes.
	var pe *parseError
	if errors.As(err, &pe) {
		err = pe.err
	}
	return hd, err
}

// parseError carries kernels.Load's error through the cache.
type parseError struct{ err error }

func (e *parseError) Error() string { return e.err.Error() }
func (e *parseError) Unwrap() error { return e.err }

// parsed is a cache entry: a parsed kernel and the memory its load was
// seen to take.
type parsed struct {
	kernel *kernels.Kernel
	// observedBytes is what the load allocated (weights, buffers, graph,
	// and the transient garbage of parsing): the observed use the memory
	// estimate is compared with. It is process-wide, so loads running at
	// the same time blur it.
	observedBytes int64
}

// allocatedBytes reads the process's cumulative heap allocation. It is
// monotonic, so a garbage collection during a load cannot hide the load's
// memory the way a live-heap difference can (a GC freeing other garbage
// made that difference zero or negative). ReadMemStats stops the world
// for microseconds, which a load, taking milliseconds, can afford; the
// runtime/metrics counter would be cheaper but counts small objects only
// when a span is refilled, so a small load could read as zero.
func allocatedBytes() uint64 {
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// CacheStats returns the parsed-kernel cache's counters.
func (h *Host) CacheStats() cache.Stats { return h.cache.Stats() }
