package runtime

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
)

// fakeUrza serves Urza's flat kernel records (GET /api/v1/kernels/{id}),
// which a test may change between loads.
type fakeUrza struct {
	mu      sync.Mutex
	records map[string]string
}

func (u *fakeUrza) set(id, record string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.records[id] = record
}

func (u *fakeUrza) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	rec, ok := u.records[strings.TrimPrefix(r.URL.Path, "/api/v1/kernels/")]
	u.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	fmt.Fprint(w, rec)
}

// flatRecord is a flat record as Urza's FastAPI app writes it.
func flatRecord(id, status, extra string) string {
	return fmt.Sprintf(`{"id":%q,"blueprint_id":"bp-1","status":%q,"compilation_pipeline":"fast",
		"kernel_binary_ref":"s3://esper-artifacts/kernels/%s/kernel.safetensors",%s
		"created_at":"2026-11-24T10:00:00","updated_at":"2026-11-24T10:00:00"}`, id, status, id, extra)
}

// bucket is an S3 stand-in whose objects a test may overwrite; fetched
// through source.FetchVerified, as the host's sources are.
type bucket struct {
	mu      sync.Mutex
	objects map[string][]byte
}

func (b *bucket) put(ref string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.objects[ref] = data
}

func (b *bucket) Fetch(ctx context.Context, ref, sha string) (source.Blob, error) {
	return source.FetchVerified(ctx, sourceFunc(func(_ context.Context, ref string) (source.Blob, error) {
		b.mu.Lock()
		data, ok := b.objects[ref]
		b.mu.Unlock()
		if !ok {
			return source.Blob{}, failure.Errorf(failure.NotFound, "no object %s", ref)
		}
		sum := sha256.Sum256(data)
		return source.Blob{Data: data, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Origin: ref}, nil
	}), ref, sha)
}

type sourceFunc func(ctx context.Context, ref string) (source.Blob, error)

func (f sourceFunc) Fetch(ctx context.Context, ref string) (source.Blob, error) { return f(ctx, ref) }

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func objectRef(id string) string { return "s3://esper-artifacts/kernels/" + id + "/kernel.safetensors" }

// trustFixture is a host resolving kernel ids through a fake Urza and
// fetching from a bucket, with layer1 declared.
func trustFixture(t *testing.T, cfg Config, store *memStore) (*Host, *fakeUrza, *bucket) {
	t.Helper()
	urza := &fakeUrza{records: map[string]string{}}
	srv := httptest.NewServer(urza)
	t.Cleanup(srv.Close)
	b := &bucket{objects: map[string][]byte{}}
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	deps := []func(*Deps){withFetcher(b), withResolver(&Urza{BaseURL: srv.URL})}
	if store != nil {
		deps = append(deps, withStore(store))
	}
	cfg.GraftingRamp = -1
	h, _, _ := newHost(t, inv, cfg, deps...)
	if _, err := declareLayer(h, "layer1"); err != nil {
		t.Fatal(err)
	}
	return h, urza, b
}

// Urza's status decides: validated and deployed load; testing is not yet
// (Unavailable: a bus command is retried until Urza validates it);
// invalid, an unknown status and none at all are refused for good.
func TestUrzaStatusDecides(t *testing.T) {
	h, urza, b := trustFixture(t, Config{}, nil)
	ctx := context.Background()
	for i, c := range []struct {
		status string
		class  failure.Class // 0: loads
		msg    string
	}{
		{"validated", 0, ""},
		{"deployed", 0, ""},
		{"testing", failure.Unavailable, `Urza says kernel "k2" is still testing: it is loaded once Urza marks it validated or deployed`},
		{"invalid", failure.Refused, `Urza says kernel "k3" is "invalid": only validated or deployed kernels are loaded`},
		{"retired", failure.Refused, `Urza says kernel "k4" is "retired": only validated or deployed kernels are loaded`},
		{"", failure.Refused, `Urza's record of kernel "k5" gives no status: only validated or deployed kernels are loaded`},
	} {
		id := fmt.Sprint("k", i)
		urza.set(id, flatRecord(id, c.status, ""))
		b.put(objectRef(id), linearKernel(t, id, nil))
		_, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: i % 4, Artifact: id})
		if c.class == 0 {
			if err != nil {
				t.Errorf("status %q: %v", c.status, err)
			}
			if _, err := h.Apply(ctx, UnloadKernel{Layer: "layer1", SeedIdx: i % 4}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if failure.ClassOf(err) != c.class || fmt.Sprint(err) != c.msg {
			t.Errorf("status %q: %v (%s), want %q (%s)", c.status, err, failure.ClassOf(err), c.msg, c.class)
		}
		if got := failure.ClassOf(err).Permanent(); got != (c.class != failure.Unavailable) {
			t.Errorf("status %q: permanent %v", c.status, got)
		}
	}
	// A kernel that was testing loads once Urza validates it.
	urza.set("k2", flatRecord("k2", "validated", ""))
	if _, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 2, Artifact: "k2"}); err != nil {
		t.Errorf("k2 once validated: %v", err)
	}
}

// A SHA-256 in Urza's record, or in its validation_report, is verified
// against the bytes fetched: a swapped S3 object is refused.
func TestUrzaChecksumIsVerified(t *testing.T) {
	h, urza, b := trustFixture(t, Config{RequireChecksum: true}, nil)
	ctx := context.Background()
	good, other := linearKernel(t, "k", nil), linearKernel(t, "k", []string{"cuda"})
	if bytes.Equal(good, other) {
		t.Fatal("the two artifacts are the same bytes")
	}
	for i, extra := range []string{
		fmt.Sprintf(`"checksum":%q,`, sha(good)),
		fmt.Sprintf(`"validation_report":{"passed":true,"sha256":%q},`, sha(good)),
		fmt.Sprintf(`"validation_report":{"artifact_sha256":%q},`, strings.ToUpper(sha(good))),
	} {
		id := fmt.Sprint("c", i)
		urza.set(id, flatRecord(id, "validated", extra))
		b.put(objectRef(id), good)
		if _, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: id}); err != nil {
			t.Fatalf("%s with its checksum: %v", extra, err)
		}
		if _, err := h.Apply(ctx, UnloadKernel{Layer: "layer1", SeedIdx: 0}); err != nil {
			t.Fatal(err)
		}
		b.put(objectRef(id), other) // the S3 object swapped
		_, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: id})
		if !errors.Is(err, kernels.ErrChecksumMismatch) || !failure.ClassOf(err).Permanent() || !strings.Contains(err.Error(), sha(good)) {
			t.Errorf("%s, the object swapped: %v (%s)", extra, err, failure.ClassOf(err))
		}
	}
	// --require-checksum: a record without one is refused outright, and
	// nothing is pinned.
	urza.set("bare", flatRecord("bare", "validated", `"validation_report":{"passed":true},`))
	b.put(objectRef("bare"), good)
	_, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: "bare"})
	if failure.ClassOf(err) != failure.Refused || !strings.Contains(fmt.Sprint(err), "--require-checksum") {
		t.Errorf("no checksum with RequireChecksum: %v", err)
	}
	if p := h.State().Pins; len(p) != 0 {
		t.Errorf("pins %v, want none", p)
	}
}

// Without a checksum in Urza's record, the bytes first loaded for an id
// are pinned (trust on first use): other bytes under that id are refused,
// in this process and after a restart, since the pins are saved with the
// state; another id is pinned on its own.
func TestUrzaPinsFirstBytes(t *testing.T) {
	store := &memStore{}
	h, urza, b := trustFixture(t, Config{}, store)
	ctx := context.Background()
	good, other := linearKernel(t, "k", nil), linearKernel(t, "k", []string{"cuda"})
	urza.set("k", flatRecord("k", "validated", `"validation_report":{},`))
	b.put(objectRef("k"), good)
	if _, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: "k"}); err != nil {
		t.Fatal(err)
	}
	if _, st := store.saved(); st.Pins["k"] != sha(good) {
		t.Fatalf("saved pins %v, want k → %s", st.Pins, sha(good))
	}
	if _, err := h.Apply(ctx, UnloadKernel{Layer: "layer1", SeedIdx: 0}); err != nil {
		t.Fatal(err)
	}
	b.put(objectRef("k"), other)
	want := fmt.Sprintf(`kernel "k": its bytes have sha256 %s, but the bytes first loaded for this id had %s`, sha(other), sha(good))
	_, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 1, Artifact: "k"})
	if failure.ClassOf(err) != failure.Malformed || !strings.HasPrefix(fmt.Sprint(err), want) {
		t.Fatalf("other bytes for a pinned id: %v (%s), want %q…", err, failure.ClassOf(err), want)
	}
	// A restarted host restores the pin.
	_, st := store.saved()
	h2, urza2, b2 := trustFixture(t, Config{}, &memStore{m: store.m})
	if _, err := h2.Restore(ctx, st); err != nil {
		t.Fatal(err)
	}
	urza2.set("k", flatRecord("k", "validated", `"validation_report":{},`))
	b2.put(objectRef("k"), other)
	if _, err := h2.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: "k"}); failure.ClassOf(err) != failure.Malformed {
		t.Fatalf("other bytes after a restart: %v, want Malformed", err)
	}
	b2.put(objectRef("k"), good)
	if _, err := h2.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: "k"}); err != nil {
		t.Fatalf("the pinned bytes after a restart: %v", err)
	}
	// A load that fails pins nothing.
	urza2.set("j", flatRecord("j", "validated", ""))
	b2.put(objectRef("j"), []byte("not a kernel"))
	if _, err := h2.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 1, Artifact: "j"}); err == nil {
		t.Fatal("junk loaded")
	}
	b2.put(objectRef("j"), other)
	if _, err := h2.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 1, Artifact: "j"}); err != nil {
		t.Fatalf("j after a failed first load: %v", err)
	}
	if p := h2.State().Pins; len(p) != 2 || p["j"] != sha(other) || p["k"] != sha(good) {
		t.Errorf("pins %v", p)
	}
}

// A Tezzeret artifact (torch.save's zip) behind an Urza record is refused
// for good, saying what it is and how to convert it, in the error and in
// the outcome event's failure_reason.
func TestUrzaTezzeretArtifactRefused(t *testing.T) {
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	for _, name := range []string{"model/data.pkl", "model/version", "model/data/0"} {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(w, "x")
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	h, urza, b := trustFixture(t, Config{}, nil)
	urza.set("tz", flatRecord("tz", "validated", ""))
	b.put(objectRef("tz"), zbuf.Bytes())
	o, err := h.Apply(context.Background(), LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: "tz"})
	if failure.ClassOf(err) != failure.Malformed || !strings.Contains(fmt.Sprint(err), "a PyTorch torch.save archive (zip)") ||
		!strings.Contains(fmt.Sprint(err), kernels.Converter) {
		t.Fatalf("a torch.save zip: %v (%s)", err, failure.ClassOf(err))
	}
	if o.Event != KernelLoadFailed || o.FailureReason != err.Error() {
		t.Errorf("outcome %+v", o)
	}
	if p := h.State().Pins; len(p) != 0 {
		t.Errorf("a refused artifact pinned: %v", p)
	}
}
