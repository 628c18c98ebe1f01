package runtime

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
)

// alreadyLoaded decides what loading l under name means while a kernel of
// that name is loaded, as Triton does for a repeated load: the same
// artifact, metadata, CPU fallback policy and seed is a no-op that returns
// the loaded kernel's view (Unchanged set), anything else is a Conflict
// naming what differs. done is false when no kernel of that name is
// loaded.
func (h *Host) alreadyLoaded(name string, l *loaded, req LoadRequest) (v KernelView, done bool, err error) {
	want := seedKey{req.Layer, req.SeedIdx}
	if want.layer == "" {
		want = seedKey{name, 0}
	}
	h.mu.RLock()
	old, ok := h.kernels[name]
	var at seedKey
	if ok {
		at = old.seed
	}
	h.mu.RUnlock()
	if !ok {
		return KernelView{}, false, nil
	}
	var diff []string
	if a, b := old.kernel.SHA256(), l.kernel.SHA256(); a != b {
		diff = append(diff, fmt.Sprintf("its artifact has sha256 %s, this one %s", a, b))
	} else if !bytes.Equal(old.meta.AppendJSON(nil), l.meta.AppendJSON(nil)) {
		diff = append(diff, "its metadata differs")
	}
	if old.fallback != l.fallback {
		diff = append(diff, fmt.Sprintf("its cpu_fallback is %s, this one %s", old.fallback, l.fallback))
	}
	if at != want {
		diff = append(diff, fmt.Sprintf("it serves layer %q seed %d, this load names layer %q seed %d", at.layer, at.idx, want.layer, want.idx))
	}
	if len(diff) > 0 {
		return KernelView{}, true, failure.Errorf(failure.Conflict, "kernel %q is already loaded and differs: %s; unload it first or load with replace",
			name, strings.Join(diff, "; "))
	}
	v = h.view(old)
	v.Unchanged = true
	return v, true, nil
}

// loadRace answers a load that lost a race with another load of the same
// name: the winner's view when they agree, a Conflict when they differ,
// and Unavailable (retry) while the winner has not finished.
func (h *Host) loadRace(name string, l *loaded, req LoadRequest) (KernelView, error) {
	v, done, err := h.alreadyLoaded(name, l, req)
	if !done {
		return KernelView{}, failure.Errorf(failure.Unavailable, "kernel %q is being loaded by another request", name)
	}
	return v, err
}

// redactRef names an artifact reference without its credentials, for
// views, logs and messages.
func redactRef(ref string) string { return source.Redact(ref) }
