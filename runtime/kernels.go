package runtime

import (
	"context"
	"log/slog"
	"path"
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
	name string
	// base is what name was derived from for a seed's kernel when the
	// load named none (seedKernelName), "" otherwise.
	base string
	// key names its reservation in the ledger: unique to this load, so
	// that a kernel replacing another of its name is placed before the
	// other lets its reservation go.
	key      string
	kernel   *kernels.Kernel
	handle   *cache.Handle[*parsed] // pins the parsed kernel in the cache
	observed int64                  // bytes its load was seen to take
	meta     contracts.KernelMetadata
	compiled *contracts.CompiledKernel // nil when loaded from a bare artifact
	// metadataFrom says which metadata describes it (see LoadRequest).
	metadataFrom MetadataSource
	source       string // where this process read the bytes from
	origin       string // where they were first loaded from, when source holds a copy
	fallback     placement.Fallback
	loadedAt     time.Time
	breaker      *admission.Breaker
	window       *health.Window
	expected     time.Duration // declared latency, for the health score
	obs          atomic.Pointer[kernelObservers]

	// seed is the seed this kernel serves (its own seed when served
	// directly); set before the kernel is in the table, then read-only.
	seed seedKey
	// implicit is how its layer is declared when nobody has.
	implicit implicit
	// artifact is what it was loaded from (load_kernel's artifact_id, or
	// the reference), shown in its seed.
	artifact string
	// pin is the Urza id its digest is pinned to, when its record carried
	// no checksum.
	pin string

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

	// model is the kernel's inference handle (Host.Model hands out its
	// address, so a lookup allocates nothing).
	model Model

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

// decisionNow returns the kernel's placement now.
func (l *loaded) decisionNow() placement.Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.decision
}

// attachment is what its seed records of it.
func (l *loaded) attachment() attachment {
	return attachment{kernel: l.name, artifact: redactRef(l.artifact), blueprint: l.meta.BlueprintID, in: l.inShape, out: l.kernel.OutputShape()}
}

// outShape is the output shape for a batch; batch 1's is shared.
func (l *loaded) outShape(batch int) []int {
	if batch == 1 && l.shape1 != nil {
		return l.shape1
	}
	return append([]int{batch}, l.kernel.OutputShape()...)
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
// it from its seed (which is culled, a fresh dormant seed taking its slot)
// and releases its reservation. When the state store cannot save that,
// the kernel keeps serving and Unload returns its error.
func (h *Host) Unload(ctx context.Context, name string) error {
	return h.unload(ctx, name, seedKey{}, "kernel "+name+" unloaded")
}

// unload is Unload with the reason its seed records; a non-zero in says
// which seed the kernel must be in (a seed command), so that a kernel
// swapped meanwhile is not unloaded in its place.
func (h *Host) unload(ctx context.Context, name string, in seedKey, why string) error {
	h.changeMu.Lock()
	h.mu.Lock()
	l, ok := h.kernels[name]
	if ok && in != (seedKey{}) && l.seed != in {
		ok = false
	}
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
	undo := h.book.detach(l.seed, name, why, h.cfg.Now())
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
	h.let(ctx, l, why)
	return nil
}

// let lets a kernel taken out of the table go: it waits for its requests
// (retire), deletes its metric series and says so.
func (h *Host) let(ctx context.Context, l *loaded, why string) {
	h.retire(ctx, l)
	h.metrics.deleteKernel(l.name, l.decisionNow().Device)
	h.log.Info("kernel unloaded", slog.String("kernel", l.name), slog.String("why", why))
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
