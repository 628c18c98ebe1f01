package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
)

// memStore is a StateStore in memory: it keeps artifacts, counts Save
// calls and keeps the last State given to Save; setFailure makes Save
// fail with an error until it is cleared.
type memStore struct {
	mu    sync.Mutex
	m     map[string][]byte
	calls int
	last  State
	fail  error
	err   error
}

func (s *memStore) Save(doc any) error {
	st := doc.(State)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	s.last = st
	s.err = s.fail
	return s.fail
}

func (s *memStore) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *memStore) setFailure(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

// saved returns how many times Save was called and the last State given.
func (s *memStore) saved() (int, State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.last
}

func (s *memStore) Put(sha string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	s.m[sha] = append([]byte(nil), data...)
	return nil
}

func (s *memStore) Where(sha string) string { return "mem:" + sha }

func (s *memStore) Get(sha string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.m[sha]
	if !ok {
		return nil, fmt.Errorf("no artifact %s", sha)
	}
	return d, nil
}

func TestStateRoundTripsThroughJSON(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withStore(store))
	ctx := context.Background()
	if _, err := declareLayer(h, "encoder.0"); err != nil { // layer id 0, declared before any kernel
		t.Fatal(err)
	}
	if _, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, "direct", nil)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(ctx, LoadRequest{Name: "seeded", Data: linearKernel(t, "seeded", []string{"cuda"}), Layer: "encoder.1", SeedIdx: 3}); err != nil {
		t.Fatal(err)
	}
	for _, st := range []contracts.SeedState{contracts.SeedTraining, contracts.SeedGrafting} {
		if err := setSeedState(h, "encoder.1", 3, st, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := setAlpha(h, "encoder.1", 3, 0.4); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(h.State())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}

	// A new host (a restart) with an empty ledger gets everything back.
	h2, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withStore(store))
	n, err := h2.Restore(ctx, st)
	if err != nil || n != 2 {
		t.Fatalf("restored %d kernels, err %v", n, err)
	}
	if got, want := fmt.Sprint(h2.Layers()), fmt.Sprint(h.Layers()); got != want {
		t.Errorf("layers %s, want %s", got, want)
	}
	v, ok := h2.Kernel("seeded")
	if !ok || v.Layer != "encoder.1" || v.SeedIdx != 3 || v.Placement.Device == "" {
		t.Fatalf("seeded kernel after restore: %+v", v)
	}
	var seed *SeedView
	for _, s := range h2.Seeds() {
		if s.Layer == "encoder.1" {
			seed = &s
		}
	}
	if seed == nil || seed.State != contracts.SeedGrafting || seed.Alpha != 0.4 || seed.Kernel != "seeded" {
		t.Fatalf("seed after restore: %+v", seed)
	}
	x := []float32{1, 2, 3, 4}
	if res, err := h2.Infer(ctx, "direct", Request{Input: x, Shape: []int{1, 4}}); err != nil || fmt.Sprint(res.Output) != fmt.Sprint(expected(x)) {
		t.Fatalf("restored kernel serves %v, %v", res.Output, err)
	}
	// A kernel whose bytes are gone is listed as failed, the rest come back.
	st.Kernels = append(st.Kernels, KernelRecord{Name: "lost", SHA256: "00", Layer: "lost"})
	h3, _, _ := newHost(t, inv, Config{}, withStore(store))
	if n, _ := h3.Restore(ctx, st); n != 2 {
		t.Fatalf("restored %d", n)
	}
	if _, ok := failedLoads(h3)["lost"]; !ok {
		t.Error("missing artifact not reported")
	}
}

func TestPerKernelFallbackFromOptimizationFlags(t *testing.T) {
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	h, _, reg := newHost(t, inv, Config{})
	ck := compiledFor(t, "k", map[string]any{"cpu_fallback": "deny"})
	if _, err := h.Load(context.Background(), LoadRequest{Compiled: &ck, Data: linearKernel(t, "k", []string{"cuda"})}); err == nil {
		t.Fatal("deny in optimization_flags ignored")
	}
	ck = compiledFor(t, "k2", map[string]any{"cpu_fallback": "allow"})
	v, err := h.Load(context.Background(), LoadRequest{Compiled: &ck, Data: linearKernel(t, "k2", []string{"cuda"})})
	if err != nil || v.Placement.Device != "cpu" || v.Placement.Degraded {
		t.Fatalf("allow: %+v %v", v.Placement, err)
	}
	if v.ObservedMiB <= 0 {
		t.Errorf("observed load memory %v", v.ObservedMiB)
	}
	mfs, _ := reg.Gather()
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "kasmina_kernel_memory_estimate_error_bytes"
	}
	if !found {
		t.Error("estimate error metric missing")
	}
}

// compiledFor returns a CompiledKernel document matching linearKernel.
func compiledFor(t *testing.T, id string, flags map[string]any) contracts.CompiledKernel {
	t.Helper()
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.DeviceRequirements = []string{"cuda"}
	md.CompilationTarget = "esper-kernel/v1"
	md.OptimizationFlags = contracts.ObjectFrom(flags)
	ck := contracts.NewCompiledKernel(md.BlueprintID, "file://"+id+".safetensors", md)
	ck.KernelID = id
	return ck
}

func TestRepositoryRefusesOversizedFilesBeforeReading(t *testing.T) {
	dir := t.TempDir()
	big := append(linearKernel(t, "big", nil), make([]byte, 4096)...) // trailing bytes: over the cap below
	if err := os.WriteFile(filepath.Join(dir, "big.safetensors"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ok.safetensors"), linearKernel(t, "ok", nil), 0o644); err != nil {
		t.Fatal(err)
	}
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{MaxArtifactBytes: int64(len(big) - 1)}, withRepository(Repository{FS: os.DirFS(dir), Where: dir}))
	loaded, failed, err := h.loadRepository(context.Background())
	if err != nil || loaded != 1 || failed != 1 {
		t.Fatalf("loaded %d failed %d err %v", loaded, failed, err)
	}
	if reason := failedLoads(h)["big"]; !strings.Contains(reason, "artifact limit") {
		t.Fatalf("oversized file reason %q", reason)
	}
}

// Seed changes reach the state store before they return, so what a
// command acknowledges has been saved.
func TestSeedChangesAreSavedBeforeReturning(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withStore(store))
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil), Layer: "l"}); err != nil {
		t.Fatal(err)
	}
	before, _ := store.saved()
	if err := setSeedState(h, "l", 0, contracts.SeedTraining, "test"); err != nil {
		t.Fatal(err)
	}
	if n, st := store.saved(); n != before+1 || len(st.Seeds) != DefaultNumSeeds || st.Seeds[0].Seed.State != contracts.SeedTraining {
		t.Fatalf("after the state change: %d saves (want %d), last saved %+v", n, before+1, st.Seeds)
	}
	if err := setAlpha(h, "l", 0, 0.5); err != nil {
		t.Fatal(err)
	}
	if n, st := store.saved(); n != before+2 || st.Seeds[0].Alpha != 0.5 {
		t.Fatalf("after the alpha change: %d saves (want %d), last saved %+v", n, before+2, st.Seeds)
	}
}

// FuzzRestoreState: a state file, however damaged, never panics Restore,
// and what Restore accepts keeps the host's invariants: layer ids are
// distinct and non-negative, seed indices non-negative, alphas within
// [0, 1], and every seed belongs to a layer the host serves.
func FuzzRestoreState(f *testing.F) {
	inv := openInventory(f, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	kernel := linearKernel(f, "k", nil)
	sum := sha256.Sum256(kernel)
	sha := hex.EncodeToString(sum[:])
	store := &memStore{m: map[string][]byte{sha: kernel}}
	f.Add([]byte(`{"version":1,"layers":{"encoder.0":0,"encoder.1":1},"seeds":[{"layer":"encoder.1","seed_idx":3,"seed":{"layer_id":1,"position":3,"state":"grafting","blueprint_id":null},"alpha":0.4}],"kernels":[{"name":"k","sha256":"` + sha + `","layer":"encoder.1","seed_idx":3,"cpu_fallback":"allow","placement":"cpu"}]}`))
	f.Add([]byte(`{"version":1,"layers":{"a":5,"b":5,"c":-1,"d":9223372036854775807},"seeds":[{"layer":"x","seed_idx":-2,"alpha":7}]}`))
	f.Add([]byte(`{"version":1,"seeds":[{"layer":"a","seed_idx":0,"seed":{"layer_id":0,"position":0,"state":"dormant"},"alpha":-3}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var st State
		if err := json.Unmarshal(data, &st); err != nil {
			return // the daemon renames an undecodable file and starts fresh
		}
		h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withStore(store))
		if _, err := h.Restore(context.Background(), st); err != nil {
			return
		}
		ids := map[int]string{}
		for _, l := range h.Layers() {
			if l.LayerID < 0 {
				t.Fatalf("layer %q has id %d", l.Name, l.LayerID)
			}
			if other, dup := ids[l.LayerID]; dup {
				t.Fatalf("layers %q and %q share id %d", other, l.Name, l.LayerID)
			}
			ids[l.LayerID] = l.Name
		}
		for _, s := range h.Seeds() {
			if s.SeedIdx < 0 || !(s.Alpha >= 0 && s.Alpha <= 1) || !serves(h, s.Layer) {
				t.Fatalf("restored seed %+v (layer served: %v)", s, serves(h, s.Layer))
			}
		}
		// The host still takes a new layer.
		if id, _ := declareLayer(h, "fuzz.new.layer"); id < 0 {
			t.Fatalf("new layer id %d", id)
		}
	})
}

// TestRestoreRepairsDamagedLayerIDsAndAlphas: a state file declaring two
// layers one id keeps it for the first name in order and drops the
// other; a layer with an id out of range or no seeds is dropped; alphas
// are clamped; seeds with a negative index, or beyond their layer's
// slots, or of no layer are dropped.
func TestRestoreRepairsDamagedLayerIDsAndAlphas(t *testing.T) {
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withStore(&memStore{}))
	var st State
	if err := json.Unmarshal([]byte(`{"version":1,"declared_layers":[
		{"layer_name":"b","layer_id":5,"num_seeds":2,"declared_by":"http"},{"layer_name":"a","layer_id":5,"num_seeds":2,"declared_by":"http"},
		{"layer_name":"c","layer_id":-1,"num_seeds":2,"declared_by":"http"},{"layer_name":"d","layer_id":9223372036854775807,"num_seeds":2,"declared_by":"http"},
		{"layer_name":"e","layer_id":6,"num_seeds":0,"declared_by":"http"},{"layer_name":"f","layer_id":7,"num_seeds":1}],
		"seeds":[{"layer":"a","seed_idx":0,"seed":{"layer_id":5,"position":0,"state":"dormant"},"alpha":7},
		         {"layer":"a","seed_idx":-1,"seed":{"layer_id":5,"position":0,"state":"dormant"},"alpha":0.5},
		         {"layer":"a","seed_idx":2,"seed":{"layer_id":5,"position":2,"state":"dormant"},"alpha":0.5},
		         {"layer":"z","seed_idx":0,"seed":{"layer_id":5,"position":0,"state":"dormant"},"alpha":0.5}]}`), &st); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Restore(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(h.Layers()); got != "[{a 5 2 [] [] http 0 []}]" {
		t.Errorf("layers after restore %s, want only a, with id 5", got)
	}
	if id, _ := declareLayer(h, "b"); id != LayerIDOf("b") {
		t.Errorf("b declared anew as %d, want its stable id %d", id, LayerIDOf("b"))
	}
	seeds := h.Seeds()
	if len(seeds) != 2+DefaultNumSeeds || seeds[0].Layer != "a" || seeds[0].Alpha != 1 || seeds[1].Alpha != 0 {
		t.Fatalf("seeds after restore %+v, want a/0 with alpha clamped to 1, a/1 fresh", seeds)
	}
}

// A state written before layer declarations (a layers map of ids numbered
// per host, seeds, a culled one among them) comes back with stable ids,
// each layer declared by its kernel, with enough slots, the culled seed
// in its slot's history.
func TestRestoreReadsStatesBeforeDeclarations(t *testing.T) {
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withStore(&memStore{}))
	var st State
	if err := json.Unmarshal([]byte(`{"version":1,"layers":{"enc":0,"dec":1},
		"seeds":[{"layer":"enc","seed_idx":5,"seed":{"seed_id":"s-5","layer_id":0,"position":5,"state":"training"},"alpha":0.5},
		         {"layer":"dec","seed_idx":1,"seed":{"seed_id":"s-1","layer_id":1,"position":1,"state":"culled"},"alpha":0}]}`), &st); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Restore(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	enc, ok := h.Layer("enc")
	if !ok || enc.LayerID != LayerIDOf("enc") || enc.NumSeeds != 6 || enc.DeclaredBy != ByKernel || enc.Seeds[5].SeedID != "s-5" || enc.Seeds[5].State != contracts.SeedTraining {
		t.Fatalf("enc after restore %+v", enc)
	}
	dec, ok := h.Layer("dec")
	if !ok || dec.NumSeeds != DefaultNumSeeds || dec.Seeds[1].State != contracts.SeedDormant || len(dec.Seeds[1].History) != 1 || dec.Seeds[1].History[0].SeedID != "s-1" {
		t.Fatalf("dec after restore %+v", dec)
	}
}

// A kernel is restored only when the bytes the store holds hash to what
// it was saved under: a flipped byte is refused and reported, not served.
// A restored kernel says it was read from the store, and where it was
// first loaded from; the state it saves keeps the latter.
func TestRestoreVerifiesArtifacts(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withStore(store))
	ctx := context.Background()
	for _, name := range []string{"good", "flipped"} {
		if _, err := h.Load(ctx, LoadRequest{Name: name, Data: linearKernel(t, name, nil), Ref: "examples (embedded)/" + name + ".safetensors"}); err != nil {
			t.Fatal(err)
		}
	}
	st := h.State()
	var flippedSHA string
	for _, k := range st.Kernels {
		if k.Name == "flipped" {
			flippedSHA = k.SHA256
			store.m[k.SHA256][len(store.m[k.SHA256])-1] ^= 0x01
		}
	}

	h2, _, _ := newHost(t, inv, Config{}, withStore(store))
	n, err := h2.Restore(ctx, st)
	if err != nil || n != 1 {
		t.Fatalf("restored %d (%v), want only the intact kernel", n, err)
	}
	if _, ok := h2.Kernel("flipped"); ok {
		t.Fatal("a damaged artifact was restored")
	}
	reason := failedLoads(h2)["flipped"]
	if !strings.Contains(reason, "mem:"+flippedSHA+" is damaged: its SHA-256 is ") || !strings.Contains(reason, "it was saved as "+flippedSHA) {
		t.Errorf("failed-load reason %q, want the damage named with both hashes", reason)
	}
	v, _ := h2.Kernel("good")
	if v.Source != "mem:"+v.SHA256 || v.OriginalSource != "examples (embedded)/good.safetensors" {
		t.Errorf("restored kernel: source %q, original source %q", v.Source, v.OriginalSource)
	}
	for _, k := range h2.State().Kernels {
		if k.Name == "good" && k.Source != "examples (embedded)/good.safetensors" {
			t.Errorf("the state of a restored kernel records source %q, want where it was first loaded from", k.Source)
		}
	}
}

// A kernel directory is read through os.Root and regular files only: a
// named pipe is listed as a failed load naming what it is (it does not
// hang the scan), a symbolic link that leads outside the directory is
// refused as a file reference would be, one that stays inside is served.
func TestRepositoryRefusesPipesAndLinksOutside(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "kernels")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for path, id := range map[string]string{filepath.Join(dir, "sub", "inside.safetensors"): "inside", filepath.Join(parent, "outside.safetensors"): "outside"} {
		if err := os.WriteFile(path, linearKernel(t, id, nil), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.safetensors"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../outside.safetensors", filepath.Join(dir, "escape.safetensors")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/inside.safetensors", filepath.Join(dir, "link.safetensors")); err != nil {
		t.Fatal(err)
	}
	repo, err := OpenRepository(dir)
	if err != nil {
		t.Fatal(err)
	}
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{}, withRepository(repo))
	var loaded, failed int
	done := make(chan struct{})
	go func() { defer close(done); loaded, failed, err = h.loadRepository(context.Background()) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("scanning a kernel directory holding a named pipe did not finish in 20 s")
	}
	if err != nil || loaded != 1 || failed != 2 {
		t.Fatalf("loaded %d, failed %d, err %v; want the one kernel inside loaded, the pipe and the escape refused", loaded, failed, err)
	}
	if _, ok := h.Kernel("inside"); !ok {
		t.Error("the kernel inside the directory is not served")
	}
	if _, ok := h.Kernel("outside"); ok {
		t.Error("a symbolic link out of the kernel directory was followed")
	}
	reasons := failedLoads(h)
	for name, want := range map[string]string{
		"pipe":   filepath.Join(dir, "pipe.safetensors") + " is a named pipe (FIFO), not a regular file",
		"escape": filepath.Join(dir, "escape.safetensors") + " leads outside the kernel directory " + dir,
	} {
		if reasons[name] != want {
			t.Errorf("failed load %s: %q, want %q", name, reasons[name], want)
		}
	}
}

// The repository scan saves once, at its end, not once per kernel; a
// failure of that save leaves the kernels serving (the scan acknowledged
// nothing to anyone) and is left to the state store to report.
func TestRepositoryScanSavesOnce(t *testing.T) {
	dir := t.TempDir()
	for _, id := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(dir, id+".safetensors"), linearKernel(t, id, nil), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, fail := range []bool{false, true} {
		repo, err := OpenRepository(dir)
		if err != nil {
			t.Fatal(err)
		}
		store := &memStore{}
		if fail {
			store.setFailure(fmt.Errorf("disk full"))
		}
		h, _, _ := newHost(t, openInventory(t, "dgxa100", nil), Config{}, withRepository(repo), withStore(store))
		loaded, failed, err := h.loadRepository(context.Background())
		if err != nil || loaded != 3 || failed != 0 {
			t.Fatalf("loaded %d failed %d: %v", loaded, failed, err)
		}
		calls, last := store.saved()
		kernelsSaved := len(last.Kernels)
		if calls != 1 || kernelsSaved != 3 {
			t.Errorf("failing hook %v: %d saves (the last with %d kernels), want 1 with 3", fail, calls, kernelsSaved)
		}
		if len(h.Kernels()) != 3 {
			t.Errorf("failing hook %v: %d kernels serve, want 3", fail, len(h.Kernels()))
		}
	}
}
