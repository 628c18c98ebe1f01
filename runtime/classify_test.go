package runtime

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/internal/regularfile"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// The classification table: each cause gets one class, and so one HTTP
// status (oip's table) and one bus decision (Class.Permanent).
func TestClassifyTable(t *testing.T) {
	netErr := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, c := range []struct {
		name      string
		err       error
		def       failure.Class
		want      failure.Class
		permanent bool
	}{
		{"artifact not found", fmt.Errorf("%w: k in kernel root /r", source.ErrNotFound), failure.Unavailable, failure.NotFound, true},
		{"file missing", &fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}, failure.Unavailable, failure.NotFound, true},
		{"Urza does not know the id", fmt.Errorf("%w: GET u: 404", errUrzaNotFound), failure.Unavailable, failure.NotFound, true},
		{"unparsable reference", fmt.Errorf("%w: %q", source.ErrInvalidRef, "s3://"), failure.Unavailable, failure.BadInput, true},
		{"unknown scheme", fmt.Errorf("%w: ftp", source.ErrUnsupportedScheme), failure.Unavailable, failure.BadInput, true},
		{"expected checksum not a SHA-256", fmt.Errorf("%w: s3://b/k: not hex", source.ErrInvalidChecksum), failure.Unavailable, failure.BadInput, true},
		{"reference refused by policy", fmt.Errorf("%w: outside the root", source.ErrNotAllowed), failure.Unavailable, failure.Refused, true},
		{"not a regular file", &regularfile.NotRegularError{Path: "p", Mode: fs.ModeNamedPipe}, failure.Unavailable, failure.Refused, true},
		{"permission denied", &fs.PathError{Op: "open", Path: "x", Err: fs.ErrPermission}, failure.Unavailable, failure.Refused, true},
		{"torchscript", fmt.Errorf("k: %w", kernels.ErrTargetNotExecutable), failure.Malformed, failure.Refused, true},
		{"illegal transition", &contracts.TransitionError{Machine: "seed", From: "dormant", To: "fossilized"}, failure.Internal, failure.Refused, true},
		{"fetched checksum mismatch", fmt.Errorf("%w: want a got b", kernels.ErrChecksumMismatch), failure.Unavailable, failure.Malformed, true},
		{"metadata checksum mismatch", fmt.Errorf("%w: a b", kernels.ErrChecksumMismatch), failure.Malformed, failure.Malformed, true},
		{"malformed kernel file", fmt.Errorf("%w: header", kernels.ErrMalformed), failure.Internal, failure.Malformed, true},
		{"metadata disagrees", fmt.Errorf("%w: shape", kernels.ErrMetadataMismatch), failure.Internal, failure.Malformed, true},
		{"artifact over the cap", fmt.Errorf("%w: 300 MiB", source.ErrTooLarge), failure.Unavailable, failure.TooLarge, true},
		{"file over the cap", fmt.Errorf("%w: 300 MiB", regularfile.ErrTooLarge), failure.Unavailable, failure.TooLarge, true},
		{"network error", fmt.Errorf("fetching u: %w", netErr), failure.Malformed, failure.Unavailable, false},
		{"deadline", fmt.Errorf("fetching u: %w", context.DeadlineExceeded), failure.Unavailable, failure.Timeout, false},
		{"cancelled", fmt.Errorf("fetching u: %w", context.Canceled), failure.Unavailable, failure.Canceled, false},
		{"HTTP 503 from a source", errors.New("fetching u: HTTP 503 Service Unavailable"), failure.Unavailable, failure.Unavailable, false},
		{"unknown parse failure", errors.New("odd"), failure.Malformed, failure.Malformed, true},
		{"already classified", failure.Errorf(failure.Conflict, "%w", source.ErrNotFound), failure.Unavailable, failure.Conflict, true},
	} {
		err := classify(c.err, c.def)
		if got := failure.ClassOf(err); got != c.want || got.Permanent() != c.permanent {
			t.Errorf("%s: class %s (permanent %v), want %s (permanent %v)", c.name, got, got.Permanent(), c.want, c.permanent)
		}
		if err.Error() != c.err.Error() {
			t.Errorf("%s: message %q became %q", c.name, c.err, err)
		}
	}
	if classify(nil, failure.Internal) != nil {
		t.Error("classify(nil) is not nil")
	}
}

// Load's errors carry their class from the cause, whatever the path:
// fetching, resolving through Urza, parsing.
func TestLoadErrorsAreClassified(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	urza := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/kernels/down":
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case "/api/v1/kernels/garbled":
			fmt.Fprint(w, `{"id": `)
		case "/api/v1/kernels/refused":
			http.Error(w, "invalid id", http.StatusUnprocessableEntity)
		default:
			http.NotFound(w, r)
		}
	}))
	defer urza.Close()
	good := linearKernel(t, "k", nil)
	errs := map[string]error{
		"missing.safetensors":  fmt.Errorf("%w: missing.safetensors in kernel root /r", source.ErrNotFound),
		"outside.safetensors":  fmt.Errorf("%w: outside.safetensors leaves the kernel root /r", source.ErrNotAllowed),
		"pipe.safetensors":     fmt.Errorf("%w: kernel pipe.safetensors is a named pipe (FIFO), not a regular file", source.ErrInvalidRef),
		"http://h/slow":        fmt.Errorf("fetching http://h/slow: %w", context.DeadlineExceeded),
		"http://h/unreachable": fmt.Errorf("fetching http://h/unreachable: %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}),
		"http://h/broken":      fmt.Errorf("fetching http://h/broken: HTTP 502 Bad Gateway"),
	}
	h, _, _ := newHost(t, inv, Config{}, withResolver(&Urza{BaseURL: urza.URL}), withFetcher(fetcherFunc(func(_ context.Context, ref, _ string) ([]byte, error) {
		switch ref {
		case "/r/garbage.safetensors":
			return []byte("root:x:0:0:root:/root:/bin/bash"), nil
		case "/r/torchscript.safetensors":
			return linearKernelTarget(t, "ts", "torchscript"), nil
		case "/r/good.safetensors":
			return good, nil
		}
		return nil, errs[ref]
	})))
	for _, c := range []struct {
		ref  string
		want failure.Class
	}{
		{"missing.safetensors", failure.NotFound},
		{"outside.safetensors", failure.Refused},
		{"pipe.safetensors", failure.BadInput},
		{"http://h/slow", failure.Timeout},
		{"http://h/unreachable", failure.Unavailable},
		{"http://h/broken", failure.Unavailable},
		{"/r/garbage.safetensors", failure.Malformed},
		{"/r/torchscript.safetensors", failure.Refused},
		{"nope", failure.NotFound},     // Urza 404
		{"down", failure.Unavailable},  // Urza 503
		{"garbled", failure.Malformed}, // Urza's record is not JSON
		{"refused", failure.BadInput},  // Urza 422
		{"a?b", failure.BadInput},      // not a valid kernel name: refused before Urza is asked
		{"/r/good.safetensors", 255},   // loads
		{"/r/good.safetensors", 255},   // a second time: the same kernel, nothing changes (as Triton)
	} {
		req := LoadRequest{Ref: c.ref}
		if !isReference(c.ref) {
			req.Name = c.ref
		}
		_, err := h.Load(context.Background(), req)
		if c.want == 255 {
			if err != nil {
				t.Fatalf("%s: %v", c.ref, err)
			}
			continue
		}
		if got := failure.ClassOf(err); err == nil || got != c.want {
			t.Errorf("%s: %v (class %s), want class %s", c.ref, err, got, c.want)
		}
	}
	// The bus takes the same decision from the same class.
	if _, err := declareLayer(h, "l"); err != nil {
		t.Fatal(err)
	}
	for ref, permanent := range map[string]bool{"missing.safetensors": true, "http://h/unreachable": false, "nope": true, "down": false} {
		err := handle(context.Background(), h, &oona.LoadKernel{LayerName: "l", SeedIdx: 0, ArtifactID: ref})
		if err == nil || failure.ClassOf(err).Permanent() != permanent {
			t.Errorf("load_kernel %s: %v (class %s), want permanent=%v", ref, err, failure.ClassOf(err), permanent)
		}
	}
}
