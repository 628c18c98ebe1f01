package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/cache"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/health"
	"github.com/esper/kasmina-host/runtime/placement"
)

// LoadRequest describes a kernel to load.
type LoadRequest struct {
	// Name is the model name; default: the kernel id (compiled document,
	// embedded metadata), else the artifact's file name.
	Name string
	// Data holds the artifact bytes. When nil, the artifact is fetched
	// from Ref (or Compiled.BinaryRef) through the host's Fetcher; with
	// Data, Ref says where the bytes were read from. A Ref that is
	// neither a path nor a URL is a kernel id, resolved through the
	// host's Resolver (Urza) into Compiled.
	Data []byte
	Ref  string
	// Origin, when Data is a kept copy (a restore from the state
	// directory), is the reference the kernel was first loaded from.
	Origin string
	// Compiled is the CompiledKernel document that points at the artifact,
	// when there is one: its metadata's checksum is verified and its
	// device requirements drive placement.
	Compiled *contracts.CompiledKernel
	// MetadataFrom says which metadata describes the kernel when Compiled
	// is set: the document's (FromDocument) or the artifact's embedded
	// one (FromArtifact, for Urza's flat record).
	MetadataFrom MetadataSource
	// Fallback overrides the host's CPU fallback policy for this kernel.
	Fallback *placement.Fallback
	// Layer and SeedIdx attach the kernel to that seed (load_kernel);
	// empty Layer serves it directly as a seed of its own.
	Layer   string
	SeedIdx int
	// Replace swaps a loaded kernel of the same name for this one: the
	// new kernel is placed first, requests already running finish on the
	// old one, and a new kernel that cannot be placed (or saved) leaves
	// the old one serving.
	Replace bool
	// batch leaves saving the state to the caller, which saves it
	// once for a batch of loads (the repository scan).
	batch bool
	// sha256 is Data's SHA-256 when the caller has it already (Restore
	// verifies the kept bytes with it).
	sha256 string
	// artifact is what a seed's kernel is loaded from (load_kernel's
	// artifact_id); default: the reference.
	artifact string
	// base names the kernel when Name is empty (a kernel id); a seed's
	// kernel whose base another seed's kernel has is named
	// base@layer.seed_idx (seedKernelName).
	base string
	// declared: Layer must be declared already (a command's seed).
	// Otherwise a load into a layer nobody declared declares it
	// (ByKernel), and a kernel served directly gets a layer of its own.
	declared bool
	// pin is the Urza id whose bytes are pinned on first use (set when
	// Urza's record carries no checksum).
	pin string
}

// MetadataSource says which KernelMetadata describes a kernel loaded from
// a CompiledKernel document.
type MetadataSource uint8

const (
	// FromDocument: the document's metadata, verified against the
	// artifact (checksum, shapes, parameter count).
	FromDocument MetadataSource = iota
	// FromArtifact: the artifact's embedded metadata. The document (Urza's
	// flat record) carries only the ids, the binary reference and the
	// checksum, which is verified while fetching.
	FromArtifact
)

// String is "document" or "artifact".
func (m MetadataSource) String() string {
	if m == FromArtifact {
		return "artifact"
	}
	return "document"
}

// MarshalText writes String, for the state file.
func (m MetadataSource) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads "document" (or nothing) and "artifact".
func (m *MetadataSource) UnmarshalText(b []byte) error {
	switch string(b) {
	case "", "document":
		*m = FromDocument
	case "artifact":
		*m = FromArtifact
	default:
		return fmt.Errorf("metadata_from %q: want document or artifact", b)
	}
	return nil
}

// metadata is the KernelMetadata that describes the kernel to load, nil
// when the artifact's embedded metadata (or the module itself) does.
func (r *LoadRequest) metadata() *contracts.KernelMetadata {
	if r.Compiled == nil || r.MetadataFrom == FromArtifact {
		return nil
	}
	return &r.Compiled.Metadata
}

// Load loads, places and starts serving a kernel, in steps each testable
// alone:
//
//	resolve   a kernel id → its CompiledKernel document (Resolver, Urza)
//	fetch     the reference → the artifact's bytes and their SHA-256,
//	          computed once, while the bytes are read
//	parse     the bytes → a validated kernel, shared through the cache of
//	          parsed kernels by digest (and metadata)
//	describe  the kernel and the request → what the host serves: name,
//	          metadata, CPU fallback policy, largest batch
//	place     a reservation on the device the placement policy chooses
//	register  the kernel table and the seed, saved in the state store;
//	          then the metrics and the log
//
// Its errors carry a failure class (see classify.go); a name given in the
// request is checked before anything is fetched. When the state store
// cannot save the change, the kernel is not kept: Load returns the store's
// error and the host is as it was.
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
	if req.Layer != "" {
		if err := validLayerName(req.Layer); err != nil {
			return KernelView{}, err
		}
	}
	if req.artifact == "" {
		req.artifact = req.Ref
	}
	if err := h.resolveDocument(ctx, &req); err != nil {
		return KernelView{}, err
	}
	art, err := h.fetchArtifact(ctx, &req)
	if err == nil {
		err = h.checkPin(&req, art)
	}
	if err != nil {
		h.recordFailure(req.Name, err)
		return KernelView{}, err
	}
	hd, err := h.parse(ctx, art, req.metadata())
	if err != nil {
		h.recordFailure(req.Name, err)
		return KernelView{}, err
	}
	l, err := h.describe(&req, art, hd)
	if err != nil {
		hd.Release()
		return KernelView{}, err
	}
	if v, done, err := h.alreadyLoaded(l, req); done {
		hd.Release()
		return v, err
	}
	if err := h.book.checkAttach(l.seed, l.attachment(), req.Replace); err != nil && (req.declared || !failure.Is(err, failure.NotFound)) {
		// Refused before anything is placed (the layer's shapes, a seed
		// holding another kernel); a layer nobody declared is declared
		// when the kernel registers.
		hd.Release()
		return KernelView{}, err
	}
	if err := ctx.Err(); err != nil {
		hd.Release()
		return KernelView{}, fmt.Errorf("loading kernel %q: %w", l.name, err)
	}
	if err := h.keepArtifact(art); err != nil {
		hd.Release()
		return KernelView{}, failure.Errorf(failure.Unavailable, "keeping kernel %q for restarts: %w", l.name, err)
	}
	if err := h.place(l); err != nil {
		hd.Release()
		h.recordFailure(l.name, err)
		return KernelView{}, err
	}
	return h.register(ctx, l, req, start)
}

// resolveDocument turns a Ref that names a kernel id (neither a path nor
// a URL) into the CompiledKernel document the Resolver gives for it, and
// checks the document, whoever gave it.
func (h *Host) resolveDocument(ctx context.Context, req *LoadRequest) error {
	if req.Compiled == nil && req.Data == nil && req.Ref != "" && !isReference(req.Ref) {
		if h.resolve == nil {
			return failure.Errorf(failure.BadInput, "artifact %q is neither a path nor a URL, and no kernel library (Urza) is configured", redactRef(req.Ref))
		}
		id := req.Ref
		r, err := h.resolve.Resolve(ctx, id)
		if err == nil {
			err = h.trust(id, r, req)
		}
		if err != nil {
			err = classify(err, failure.Unavailable)
			h.recordFailure(req.Name, err)
			return err
		}
		req.Compiled, req.MetadataFrom, req.Ref = r.Compiled, r.MetadataFrom, ""
	}
	if req.Compiled != nil {
		if err := req.Compiled.Validate(); err != nil {
			return failure.Errorf(failure.BadInput, "compiled kernel document: %w", err)
		}
	}
	return nil
}

// trust decides whether Urza's record of kernel id may be loaded (see
// trust.go): its status, and a checksum or else a pin.
func (h *Host) trust(id string, r Resolved, req *LoadRequest) error {
	if err := checkStatus(id, r.Status); err != nil {
		return err
	}
	if r.Compiled == nil {
		return failure.Errorf(failure.Malformed, "Urza's record of kernel %q points at no artifact", id)
	}
	if r.Compiled.Metadata.Checksum != nil {
		return nil
	}
	if h.cfg.RequireChecksum {
		return failure.Errorf(failure.Refused, "Urza's record of kernel %q carries no SHA-256 (checksum, metadata.checksum or validation_report.sha256), and the host requires one (--require-checksum)", id)
	}
	req.pin = id
	return nil
}

// checkPin refuses bytes for a pinned Urza id that are not the bytes
// first loaded for it.
func (h *Host) checkPin(req *LoadRequest, art artifact) error {
	if req.pin == "" {
		return nil
	}
	if want, ok := h.pins.get(req.pin); ok && want != art.sha256 {
		return failure.Errorf(failure.Malformed, "kernel %q: its bytes have sha256 %s, but the bytes first loaded for this id had %s; Urza's record carries no checksum, so the first bytes are trusted and different ones refused",
			req.pin, art.sha256, want)
	}
	return nil
}

// artifact is a kernel file's bytes, their SHA-256 in lowercase hex, and
// the reference this process read them from ("" for bytes given as such).
type artifact struct {
	data   []byte
	sha256 string
	source string
}

// fetchArtifact returns the request's bytes, or fetches them from its
// reference (or its document's binary_ref), verifying the document's
// checksum while they are read. The digest is computed once: by the
// source while streaming, or here for bytes given as such.
func (h *Host) fetchArtifact(ctx context.Context, req *LoadRequest) (artifact, error) {
	ref := req.Ref
	if ref == "" && req.Compiled != nil {
		ref = req.Compiled.BinaryRef
	}
	if req.Data != nil {
		return artifact{data: req.Data, sha256: orDigest(req.sha256, req.Data), source: ref}, nil
	}
	if ref == "" {
		return artifact{}, failure.Errorf(failure.BadInput, "no artifact: give bytes, a reference or a document with binary_ref")
	}
	if h.fetch == nil {
		return artifact{}, failure.Errorf(failure.Refused, "cannot fetch %q: no artifact source is configured", redactRef(ref))
	}
	checksum := ""
	if req.Compiled != nil && req.Compiled.Metadata.Checksum != nil {
		checksum = *req.Compiled.Metadata.Checksum
	}
	b, err := h.fetch.Fetch(ctx, ref, checksum)
	if err != nil {
		// The sources' errors name the reference already.
		return artifact{}, classify(err, failure.Unavailable)
	}
	return artifact{data: b.Data, sha256: orDigest(b.SHA256, b.Data), source: ref}, nil
}

// orDigest is sum, or data's SHA-256 when the caller had none.
func orDigest(sum string, data []byte) string {
	if sum != "" {
		return sum
	}
	d := sha256.Sum256(data)
	return hex.EncodeToString(d[:])
}

// parse validates an artifact into a kernel, sharing the parsed kernel
// with earlier loads of the same bytes (by their digest) under the same
// metadata. The handle pins the entry until released.
func (h *Host) parse(ctx context.Context, art artifact, md *contracts.KernelMetadata) (*cache.Handle[*parsed], error) {
	key := art.sha256
	if md != nil {
		// The same bytes under other metadata are validated again.
		mdSum := sha256.Sum256(md.AppendJSON(nil))
		key += ":" + hex.EncodeToString(mdSum[:8])
	}
	hd, err := h.cache.GetOrLoad(ctx, key, func(ctx context.Context, _ string) (*parsed, int64, error) {
		before := allocatedBytes()
		k, err := kernels.Load(art.data, kernels.LoadOptions{Metadata: md, Logger: h.log, SHA256: art.sha256})
		if err != nil {
			return nil, 0, &parseError{err}
		}
		observed := max(int64(allocatedBytes()-before), 0)
		// The cache is sized by what the entry keeps (the file or the
		// weights), not by observed, which counts parse garbage and
		// anything else the process allocated meanwhile.
		size := max(int64(len(art.data)), 4*int64(k.ParameterCount()))
		return &parsed{kernel: k, observedBytes: observed}, size, nil
	})
	if err != nil {
		// The cache's wrapping names its key (a hash): the loader's own
		// error says what is wrong with the bytes.
		var pe *parseError
		if errors.As(err, &pe) {
			err = pe.err
		}
		what := art.source
		if what == "" {
			what = "the artifact"
		}
		return nil, classify(fmt.Errorf("%s: %w", what, err), failure.Malformed)
	}
	return hd, nil
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

// describe builds what the host serves from a parsed kernel and the
// request: its name, its metadata (made from the module when the artifact
// embeds none), its CPU fallback policy (the request's, else the kernel's
// optimization_flags.cpu_fallback, else the host's), its largest batch
// under the host's limits, and its seed. The kernel is neither placed nor
// visible yet.
func (h *Host) describe(req *LoadRequest, art artifact, hd *cache.Handle[*parsed]) (*loaded, error) {
	k := hd.Value().kernel
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
		return nil, classify(err, failure.Refused)
	}
	seed := seedKey{req.Layer, req.SeedIdx}
	name, base := req.Name, ""
	if name == "" {
		name = req.base
		if name == "" {
			name = defaultName(meta.KernelID, art.source, k.ID())
		}
		if seed.layer != "" {
			base = name
			name = h.seedKernelName(name, seed)
		}
	}
	if seed.layer == "" {
		seed = seedKey{name, 0}
	}
	fb := h.cfg.Fallback
	flag, _ := meta.OptimizationFlags.Get("cpu_fallback")
	if v, ok := flag.(string); ok {
		// A kernel may carry its own policy in optimization_flags.
		f, err := placement.ParseFallback(v)
		if err != nil {
			return nil, failure.Errorf(failure.BadInput, "kernel %q: optimization_flags.cpu_fallback: %w", name, err)
		}
		fb = f
	}
	if req.Fallback != nil {
		fb = *req.Fallback
	}
	im := implicit{by: ByKernel, direct: req.Layer == ""}
	if req.declared {
		im = implicit{}
	}
	artifactID := req.artifact
	if artifactID == "" {
		artifactID = art.source
	}
	l := &loaded{
		name:         name,
		base:         base,
		key:          name + "#" + strconv.FormatUint(h.loads.Add(1), 10),
		kernel:       k,
		handle:       hd,
		observed:     hd.Value().observedBytes,
		meta:         *meta,
		compiled:     req.Compiled,
		metadataFrom: req.MetadataFrom,
		source:       art.source,
		origin:       req.Origin,
		fallback:     fb,
		loadedAt:     h.cfg.Now(),
		breaker:      admission.NewBreaker(h.cfg.BreakerThreshold, h.cfg.BreakerCooldown, h.cfg.Now),
		window:       health.NewWindow(k.OutputSize()),
		expected:     health.ExpectedLatency(meta.PerformanceProfile),
		shape1:       append([]int{1}, k.OutputShape()...),
		inShape:      k.InputShape(),
		seed:         seed,
		implicit:     im,
		artifact:     artifactID,
		pin:          req.pin,
		gate:         newGate(),
	}
	l.model = Model{h: h, l: l}
	if l.maxBatch = min(h.cfg.MaxBatch, k.MaxBatchWithin(h.cfg.MaxOutputBytes)); l.maxBatch < 1 {
		return nil, failure.Errorf(failure.TooLarge, "kernel %q needs %s for one sample's output and intermediate activations, over the host's limit of %s per request",
			name, byteSize(k.RunBytes(1)), byteSize(h.cfg.MaxOutputBytes))
	}
	return l, nil
}

// keepArtifact keeps a kernel's bytes in the state store, under the digest
// the fetch computed, for restarts.
func (h *Host) keepArtifact(art artifact) error {
	if h.store == nil {
		return nil
	}
	return h.store.Put(art.sha256, art.data)
}

// place reserves memory for l on the device the placement policy chooses
// among the devices now, and records the decision.
func (h *Host) place(l *loaded) error {
	dec, err := h.ledger.PlaceAndReserve(h.planner, l.key, h.placementRequest(l), devices(h.inv.Snapshot()))
	switch {
	case errors.Is(err, placement.ErrNoPlacement):
		return failure.Errorf(failure.Refused, "kernel %q: %s", l.name, dec.Reason())
	case err != nil:
		return failure.Errorf(failure.BadInput, "kernel %q: %w", l.name, err)
	}
	l.setDecision(dec)
	return nil
}

// register makes a placed kernel serve: in the kernel table and attached
// to its seed, saved in the state store, or neither. The kernel the seed
// held (a swap) and a kernel of the same name elsewhere (a Replace that
// moves it) leave the table in the same step: requests already running
// finish on them, and their reservations and cache pins go once they
// have. Only then come the metrics and the log.
func (h *Host) register(ctx context.Context, l *loaded, req LoadRequest, start time.Time) (KernelView, error) {
	name := l.name
	h.changeMu.Lock()
	h.mu.Lock()
	abort := func(err error) (KernelView, error) {
		h.mu.Unlock()
		h.changeMu.Unlock()
		h.ledger.Release(l.key)
		l.handle.Release()
		return KernelView{}, err
	}
	if err := ctx.Err(); err != nil {
		// The caller's deadline passed: nothing is committed (an HTTP load
		// answers 504 and the kernel is not loaded).
		return abort(fmt.Errorf("loading kernel %q: %w", name, err))
	}
	same := h.kernels[name] // the kernel of this name, wherever it serves
	if same != nil && l.base != "" && same.seed != l.seed {
		// The name was derived for this seed, and another seed's load of
		// the same artifact registered it since: this kernel takes the
		// name of its own seed rather than move the other.
		name = h.seedKernelNameLocked(l.base, l.seed)
		l.name, same = name, h.kernels[name]
	}
	cur := h.kernels[h.book.kernelAt(l.seed)] // the kernel the seed holds
	if same != nil && !req.Replace {
		// Another load of the same name got there first.
		h.mu.Unlock()
		h.changeMu.Unlock()
		h.ledger.Release(l.key)
		l.handle.Release()
		return h.loadRace(l, req)
	}
	now := h.cfg.Now()
	var undos []func()
	undoAll := func() {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
	}
	if same != nil && same != cur {
		undos = append(undos, h.book.detach(same.seed, name, "kernel "+name+" moved to "+l.seed.layer+"/"+strconv.Itoa(l.seed.idx), now))
	}
	undo, err := h.book.attach(l.seed, l.attachment(), req.Replace, l.implicit, now)
	if err != nil {
		undoAll()
		return abort(err)
	}
	undos = append(undos, undo)
	if l.pin != "" {
		undos = append(undos, h.pins.pin(l.pin, l.kernel.SHA256()))
	}
	if cur != nil {
		delete(h.kernels, cur.name)
	}
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
		if cur != nil {
			h.kernels[cur.name] = cur
		}
		if same != nil {
			h.kernels[name] = same
		}
		undoAll()
		if hadFailed {
			h.failed[name] = failedBefore
			h.failedOrder = append(h.failedOrder, name)
		}
		return abort(saveErr)
	}
	rt := l.route.Load()
	l.obs.Store(h.metrics.kernel(name, rt.placedOn, rt.exec.Name()))
	h.changeMu.Unlock()

	dec := l.decisionNow()
	if same != nil {
		if from := same.decisionNow().Device; from != dec.Device {
			h.metrics.reserved.DeleteLabelValues(name, from)
		}
		h.retire(ctx, same)
	}
	if cur != nil && cur != same {
		h.let(ctx, cur, "kernel "+cur.name+" swapped for "+name+" in "+l.seed.layer+"/"+strconv.Itoa(l.seed.idx))
	}
	h.metrics.loadDuration.Observe(h.cfg.Now().Sub(start).Seconds())
	h.metrics.setReserved(name, dec.Device, dec.EstimateMiB)
	h.metrics.observeMemory(name, dec.EstimateMiB, l.observed, l.kernel.MemoryCheck())
	if dec.Fallback {
		h.metrics.fallbacks.WithLabelValues(name, dec.Shortfall.Label()).Inc()
	}
	h.log.Info("kernel loaded", slog.String("kernel", name), slog.String("layer", l.seed.layer), slog.Int("seed_idx", l.seed.idx),
		slog.String("placed_on", dec.Device), slog.String("executed_on", rt.exec.Device()), slog.Bool("degraded", dec.Degraded),
		slog.Bool("replaced", same != nil || cur != nil), slog.String("reason", dec.Reason()))
	return h.view(l), nil
}

// seedKernelName names the kernel a load puts into seed k when the
// request names none: base, unless another seed's kernel has that name;
// then base@layer.seed_idx (the layer's id in place of its name when the
// name could not be part of a model name).
func (h *Host) seedKernelName(base string, k seedKey) string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.seedKernelNameLocked(base, k)
}

// seedKernelNameLocked is seedKernelName with h.mu held.
func (h *Host) seedKernelNameLocked(base string, k seedKey) string {
	other, taken := h.kernels[base]
	if !taken || other.seed == k {
		return base
	}
	idx := strconv.Itoa(k.idx)
	if n := base + "@" + k.layer + "." + idx; validName(n) == nil {
		return n
	}
	id, ok := h.book.layerID(k.layer)
	if !ok {
		id = LayerIDOf(k.layer)
	}
	return base + "@" + strconv.Itoa(id) + "." + idx
}

// retire lets a kernel no longer in the table go: it waits for the
// requests it admitted to finish (until ctx ends), then releases its
// reservation and its pin in the cache of parsed kernels.
func (h *Host) retire(ctx context.Context, l *loaded) {
	select {
	case <-l.gate.close():
	case <-ctx.Done():
		h.log.Warn("did not wait for in-flight requests", slog.String("kernel", l.name), slog.Any("err", ctx.Err()))
	}
	h.ledger.Release(l.key)
	l.handle.Release() // the parsed kernel stays cached until evicted
}

// alreadyLoaded decides what loading l means while a kernel of its name is
// loaded, as Triton does for a repeated load: the same artifact, metadata,
// CPU fallback policy and seed is a no-op that returns the loaded kernel's
// view (Unchanged set), anything else is a Conflict naming what differs.
// done is false when no kernel of that name is loaded.
func (h *Host) alreadyLoaded(l *loaded, req LoadRequest) (v KernelView, done bool, err error) {
	h.mu.RLock()
	old, ok := h.kernels[l.name]
	h.mu.RUnlock()
	if !ok {
		return KernelView{}, false, nil
	}
	if !req.Replace || sameKernel(old, l) {
		return h.compareLoaded(old, l)
	}
	return KernelView{}, false, nil
}

// sameKernel reports whether l is old again: the same artifact, metadata,
// CPU fallback policy and seed.
func sameKernel(old, l *loaded) bool {
	return old.kernel.SHA256() == l.kernel.SHA256() && bytes.Equal(old.meta.AppendJSON(nil), l.meta.AppendJSON(nil)) &&
		old.fallback == l.fallback && old.seed == l.seed
}

// compareLoaded is alreadyLoaded's answer for a loaded kernel old of l's
// name: its view when l is the same kernel, a Conflict naming what
// differs otherwise.
func (h *Host) compareLoaded(old, l *loaded) (v KernelView, done bool, err error) {
	var diff []string
	if a, b := old.kernel.SHA256(), l.kernel.SHA256(); a != b {
		diff = append(diff, fmt.Sprintf("its artifact has sha256 %s, this one %s", a, b))
	} else if !bytes.Equal(old.meta.AppendJSON(nil), l.meta.AppendJSON(nil)) {
		diff = append(diff, "its metadata differs")
	}
	if old.fallback != l.fallback {
		diff = append(diff, fmt.Sprintf("its cpu_fallback is %s, this one %s", old.fallback, l.fallback))
	}
	if old.seed != l.seed {
		diff = append(diff, fmt.Sprintf("it serves layer %q seed %d, this load names layer %q seed %d", old.seed.layer, old.seed.idx, l.seed.layer, l.seed.idx))
	}
	if len(diff) > 0 {
		return KernelView{}, true, failure.Errorf(failure.Conflict, "kernel %q is already loaded and differs: %s; unload it first or load with replace",
			l.name, strings.Join(diff, "; "))
	}
	v = h.view(old)
	v.Unchanged = true
	return v, true, nil
}

// loadRace answers a load that lost a race with another load of the same
// name: the winner's view when they agree, a Conflict when they differ,
// and Unavailable (retry) while the winner has not finished.
func (h *Host) loadRace(l *loaded, req LoadRequest) (KernelView, error) {
	v, done, err := h.alreadyLoaded(l, req)
	if !done {
		return KernelView{}, failure.Errorf(failure.Unavailable, "kernel %q is being loaded by another request", l.name)
	}
	return v, err
}
