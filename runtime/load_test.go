package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/placement"
)

// sizedKernel is linearKernel with the memory footprint and device
// requirements given, and its bias shifted by bias (so that two kernels of
// one id can be told apart by their outputs).
func sizedKernel(t testing.TB, id string, reqs []string, footprintMiB float64, bias float32) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: 4, OutFeatures: 3, Bias: true},
		{Type: "relu"},
	}}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.DeviceRequirements = reqs
	md.MemoryFootprintMB = footprintMiB
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{3, 4}, []float32{1, 1, 0, 0, 0, 0, 1, -1, -1, 0, 0, 0}),
		kernels.F32Tensor("0.bias", []int{3}, []float32{bias, 0.5 + bias, -1 + bias}),
	}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A reload that cannot be placed, or whose change cannot be saved, keeps
// the old kernel serving with its reservation: the new one is placed
// before the old one goes (the old code unloaded first, and a reload that
// failed left nothing).
func TestFailedReloadKeepsTheOldKernel(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withStore(store))
	ctx := context.Background()
	v, err := h.Load(ctx, LoadRequest{Data: sizedKernel(t, "k", []string{"cuda:2"}, 64, 0)})
	if err != nil {
		t.Fatal(err)
	}
	reserved := h.ledger.ReservedMiB("cuda:2")
	seedID := h.Seeds()[0].Seed.SeedID
	x := []float32{1, 2, 3, 4}
	serves := func(what string) {
		t.Helper()
		if got, ok := h.Kernel("k"); !ok || got.SHA256 != v.SHA256 || got.Placement.Device != "cuda:2" {
			t.Fatalf("%s: the old kernel is gone (%+v, %v)", what, got.Placement, ok)
		}
		res, err := h.Infer(ctx, "k", Request{Input: x, Shape: []int{1, 4}})
		if err != nil || fmt.Sprint(res.Output) != fmt.Sprint(expected(x)) {
			t.Fatalf("%s: the old kernel does not serve: %v %v", what, res.Output, err)
		}
		if got := h.ledger.ReservedMiB("cuda:2"); got != reserved {
			t.Fatalf("%s: %v MiB reserved on cuda:2, %v before", what, got, reserved)
		}
	}
	deny := placement.FallbackDeny
	_, err = h.Load(ctx, LoadRequest{Data: sizedKernel(t, "k", []string{"cuda:2"}, 1e9, 1), Fallback: &deny, Replace: true})
	if failure.ClassOf(err) != failure.Refused {
		t.Fatalf("an unplaceable reload: %v, want Refused", err)
	}
	serves("after an unplaceable reload")

	store.setFailure(errors.New("disk full"))
	_, err = h.Load(ctx, LoadRequest{Data: sizedKernel(t, "k", []string{"cuda:2"}, 64, 1), Replace: true})
	if failure.ClassOf(err) != failure.Unavailable || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("a reload that cannot be saved: %v, want Unavailable", err)
	}
	serves("after a reload that could not be saved")
	store.setFailure(nil)

	// A reload that works swaps the kernel in the same seed, and moves the
	// reservation: the old one goes once the new one holds its own.
	nv, err := h.Load(ctx, LoadRequest{Data: sizedKernel(t, "k", []string{"cuda:2"}, 64, 1), Replace: true})
	if err != nil || nv.SHA256 == v.SHA256 || nv.LayerID != v.LayerID {
		t.Fatalf("reload: %v, sha %s (was %s), layer id %d (was %d)", err, nv.SHA256, v.SHA256, nv.LayerID, v.LayerID)
	}
	if got := h.ledger.ReservedMiB("cuda:2"); got != reserved {
		t.Errorf("%v MiB reserved on cuda:2 after the swap, want %v (the new kernel's only)", got, reserved)
	}
	if seeds := h.Seeds(); len(seeds) != 1 || seeds[0].Seed.SeedID != seedID || seeds[0].Kernel != "k" {
		t.Errorf("seeds after the swap: %+v, want the same seed (%s) holding k", seeds, seedID)
	}
}

// Requests running while a kernel is replaced all succeed, each on the old
// kernel or the new one (run with -race).
func TestReplaceSwapsUnderLoad(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	ctx := context.Background()
	versions := [][]byte{sizedKernel(t, "k", nil, 1, 0), sizedKernel(t, "k", nil, 1, 10)}
	if _, err := h.Load(ctx, LoadRequest{Data: versions[0]}); err != nil {
		t.Fatal(err)
	}
	x := []float32{1, 2, 3, 4}
	old, swapped := fmt.Sprint(expected(x)), fmt.Sprint([]float32{13, 9.5, 8})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served atomic.Int64
	var bad atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := h.Infer(ctx, "k", Request{Input: x, Shape: []int{1, 4}})
				if got := fmt.Sprint(res.Output); err != nil || got != old && got != swapped {
					bad.Store(fmt.Sprintf("%v %v", got, err))
					return
				}
				served.Add(1)
			}
		}()
	}
	for i := range 100 {
		if _, err := h.Load(ctx, LoadRequest{Data: versions[(i+1)%2], Replace: true}); err != nil {
			t.Fatalf("swap %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatalf("a request failed or got another kernel's answer during the swaps: %v", b)
	}
	if v, _ := h.Kernel("k"); h.ledger.ReservedMiB(v.Placement.Device) != v.Placement.EstimateMiB {
		t.Errorf("%v MiB reserved on %s after the swaps, want the one kernel's %v", h.ledger.ReservedMiB(v.Placement.Device), v.Placement.Device, v.Placement.EstimateMiB)
	}
	t.Logf("%d requests served during 100 swaps", served.Load())
}

// The artifact's SHA-256 is computed once per load, while it is read: the
// digest the source streamed is the kernel's, the state store's key and
// the cache's, and nothing hashes the bytes again (a digest that is not
// the bytes' would show anywhere it was recomputed).
func TestLoadHashesTheArtifactOnce(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	streamed := strings.Repeat("5a", 32)
	var fetches atomic.Int64
	fetch := blobFetcher(func(context.Context, string, string) (source.Blob, error) {
		fetches.Add(1)
		return source.Blob{Data: data, SHA256: streamed, Size: int64(len(data))}, nil
	})
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withFetcher(fetch), withStore(store))
	v, err := h.Load(context.Background(), LoadRequest{Ref: "/r/k.safetensors"})
	if err != nil {
		t.Fatal(err)
	}
	if v.SHA256 != streamed {
		t.Errorf("the kernel's sha256 is %s, want the streamed %s", v.SHA256, streamed)
	}
	if _, ok := store.m[streamed]; !ok || len(store.m) != 1 {
		t.Errorf("the store keeps %d artifacts, want one under the streamed digest", len(store.m))
	}
	if _, err := h.Load(context.Background(), LoadRequest{Name: "k2", Ref: "/r/k.safetensors"}); err != nil {
		t.Fatal(err)
	}
	if st := h.Stats().Cache; st.Hits != 1 {
		t.Errorf("cache %+v: the second load of the same digest should hit", st)
	}
	if st := h.State(); st.Kernels[0].SHA256 != streamed {
		t.Errorf("the state records %s", st.Kernels[0].SHA256)
	}
}

type blobFetcher func(ctx context.Context, ref, sha string) (source.Blob, error)

func (f blobFetcher) Fetch(ctx context.Context, ref, sha string) (source.Blob, error) {
	return f(ctx, ref, sha)
}

// Each step of the pipeline on its own.
func TestLoadSteps(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", []string{"cuda"})
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	flat := contracts.NewCompiledKernel("bp", "s3://b/k", contracts.NewKernelMetadata("k", "bp", "k"))
	resolver := resolverFunc(func(_ context.Context, id string) (Resolved, error) {
		if id != "k" {
			return Resolved{}, failure.Errorf(failure.NotFound, "no %s", id)
		}
		return Resolved{Compiled: &flat, MetadataFrom: FromArtifact, Status: "validated"}, nil
	})
	var gotSum string
	fetch := blobFetcher(func(_ context.Context, ref, sha string) (source.Blob, error) {
		gotSum = sha
		return source.Blob{Data: data, SHA256: digest}, nil
	})
	h, _, _ := newHost(t, inv, Config{Fallback: placement.FallbackAllow}, withResolver(resolver), withFetcher(fetch))
	ctx := context.Background()

	t.Run("resolve", func(t *testing.T) {
		req := LoadRequest{Ref: "k"}
		if err := h.resolveDocument(ctx, &req); err != nil {
			t.Fatal(err)
		}
		if req.Compiled != &flat || req.MetadataFrom != FromArtifact || req.Ref != "" || req.metadata() != nil {
			t.Fatalf("resolved request %+v", req)
		}
		for _, r := range []string{"/r/k.safetensors", "s3://b/k"} {
			req := LoadRequest{Ref: r}
			if err := h.resolveDocument(ctx, &req); err != nil || req.Compiled != nil {
				t.Errorf("a reference %s was resolved: %+v %v", r, req.Compiled, err)
			}
		}
		bad := contracts.CompiledKernel{}
		if err := h.resolveDocument(ctx, &LoadRequest{Compiled: &bad}); failure.ClassOf(err) != failure.BadInput {
			t.Errorf("an invalid document: %v", err)
		}
	})
	t.Run("fetch", func(t *testing.T) {
		c := flat
		sumRef := strings.Repeat("ab", 32)
		c.Metadata.Checksum = &sumRef
		art, err := h.fetchArtifact(ctx, &LoadRequest{Compiled: &c})
		if err != nil || art.source != "s3://b/k" || art.sha256 != digest || gotSum != sumRef {
			t.Fatalf("fetched %q (%s), checksum asked %q: %v", art.source, art.sha256, gotSum, err)
		}
		art, err = h.fetchArtifact(ctx, &LoadRequest{Data: data, Ref: "here"})
		if err != nil || art.sha256 != digest || art.source != "here" {
			t.Fatalf("bytes given: %+v %v", art.source, err)
		}
		if _, err := h.fetchArtifact(ctx, &LoadRequest{}); failure.ClassOf(err) != failure.BadInput {
			t.Errorf("nothing to fetch: %v", err)
		}
	})
	t.Run("parse", func(t *testing.T) {
		art := artifact{data: data, sha256: digest}
		before := h.Stats().Cache
		a, err := h.parse(ctx, art, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Release()
		b, err := h.parse(ctx, art, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Release()
		if a.Value() != b.Value() || h.Stats().Cache.Hits != before.Hits+1 {
			t.Errorf("the same digest parsed twice")
		}
		md := a.Value().kernel.Metadata()
		other := *md
		other.Name = "another name"
		c, err := h.parse(ctx, art, &other)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		if c.Value() == a.Value() {
			t.Error("the same bytes under other metadata were not validated again")
		}
		if _, err := h.parse(ctx, artifact{data: []byte("nope"), sha256: strings.Repeat("0", 64), source: "x.safetensors"}, nil); failure.ClassOf(err) != failure.Malformed || !strings.HasPrefix(err.Error(), "x.safetensors: ") {
			t.Errorf("garbage: %v", err)
		}
	})
	t.Run("describe and place", func(t *testing.T) {
		hd, err := h.parse(ctx, artifact{data: data, sha256: digest}, nil)
		if err != nil {
			t.Fatal(err)
		}
		deny := placement.FallbackDeny
		for _, c := range []struct {
			req  LoadRequest
			name string
			fb   placement.Fallback
			seed seedKey
		}{
			{LoadRequest{}, "k", placement.FallbackAllow, seedKey{"k", 0}},
			{LoadRequest{Name: "n", Layer: "enc", SeedIdx: 2, Fallback: &deny}, "n", placement.FallbackDeny, seedKey{"enc", 2}},
		} {
			l, err := h.describe(&c.req, artifact{data: data, sha256: digest, source: "/r/k.safetensors"}, hd)
			if err != nil {
				t.Fatal(err)
			}
			if l.name != c.name || l.fallback != c.fb || l.seed != c.seed || l.maxBatch != h.cfg.MaxBatch || l.source != "/r/k.safetensors" {
				t.Errorf("described %s %s %v max %d", l.name, l.fallback, l.seed, l.maxBatch)
			}
			if err := h.place(l); err != nil {
				t.Fatal(err)
			}
			if d := l.decisionNow(); !strings.HasPrefix(d.Device, "cuda:") || h.ledger.ReservedMiB(d.Device) < d.EstimateMiB {
				t.Errorf("placed on %s, %v MiB reserved", d.Device, h.ledger.ReservedMiB(d.Device))
			}
			h.ledger.Release(l.key)
		}
		hd.Release()
	})
}

// Urza's flat record is a typed field of the load, and of the state: a
// kernel loaded through one is described by its artifact's metadata, and
// comes back so after a restart; so does one saved by an older host,
// which marked it in the document's validation_results.
func TestFlatRecordsSurviveARestart(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	flat := contracts.NewCompiledKernel("bp", "s3://b/k", contracts.NewKernelMetadata("k", "bp", "k"))
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withStore(store))
	if _, err := h.Load(context.Background(), LoadRequest{Compiled: &flat, MetadataFrom: FromArtifact, Data: data}); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(h.State())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`"metadata_from":"artifact"`)) {
		t.Fatalf("the state does not record where the metadata comes from: %s", raw)
	}
	legacy := bytes.Replace(raw, []byte(`"metadata_from":"artifact",`), nil, 1)
	legacy = bytes.Replace(legacy, []byte(`"validation_results":{}`), []byte(`"validation_results":{"metadata_from":"artifact"}`), 1)
	if bytes.Equal(legacy, raw) || bytes.Contains(legacy, []byte(`"metadata_from":"artifact","layer"`)) {
		t.Fatalf("could not write a legacy state: %s", legacy)
	}
	for name, doc := range map[string][]byte{"current": raw, "legacy": legacy} {
		var st State
		if err := json.Unmarshal(doc, &st); err != nil {
			t.Fatal(err)
		}
		h2, _, _ := newHost(t, inv, Config{}, withStore(store))
		if n, err := h2.Restore(context.Background(), st); err != nil || n != 1 {
			t.Fatalf("%s state: restored %d: %v (%v)", name, n, err, failedLoads(h2))
		}
		if v, _ := h2.Kernel("k"); v.Metadata.ParameterCount != 15 {
			t.Errorf("%s state: the restored kernel is described by %+v, want the artifact's metadata", name, v.Metadata)
		}
	}
}
