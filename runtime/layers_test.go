package runtime

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// render is what a change may touch in a book: its layers, seeds and
// histories.
func render(b *layerBook, now time.Time) string {
	var s strings.Builder
	for _, l := range b.layerViews() {
		fmt.Fprintf(&s, "layer %s=%d (%d seeds, %v→%v, by %s); ", l.Name, l.LayerID, l.NumSeeds, l.InputShape, l.OutputShape, l.DeclaredBy)
		v, _ := b.layerView(l.Name, now, 0)
		for _, sv := range v.Seeds {
			k := "-"
			if sv.Kernel != nil {
				k = *sv.Kernel
			}
			fmt.Fprintf(&s, "seed %d %s %s kernel %s alpha %v transitions %d history %d; ", sv.SeedIdx, sv.SeedID, sv.State, k, sv.Alpha, len(sv.Transitions), len(sv.History))
		}
	}
	return s.String()
}

func att(kernel string) attachment {
	return attachment{kernel: kernel, artifact: kernel + ".safetensors", in: []int{4}, out: []int{3}}
}

func spec(n int) LayerSpec { return LayerSpec{NumSeeds: n} }

// Every change of the book comes with an undo that puts back exactly what
// it changed: a refused save leaves the book as it was.
func TestLayerBookChangesUndo(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	if _, _, err := b.declare("enc", spec(4), ByHTTP, now); err != nil {
		t.Fatal(err)
	}
	if _, err := b.attach(seedKey{"enc", 1}, att("k1"), false, implicit{}, now); err != nil {
		t.Fatal(err)
	}
	if _, err := b.attach(seedKey{"direct", 0}, att("direct"), false, implicit{by: ByKernel, direct: true}, now); err != nil {
		t.Fatal(err)
	}
	before := render(b, now)
	for _, c := range []struct {
		name   string
		change func() (func(), error)
	}{
		{"a new layer", func() (func(), error) { _, u, err := b.declare("new", spec(2), ByHTTP, now); return u, err }},
		{"a grown layer", func() (func(), error) { _, u, err := b.declare("enc", spec(6), ByFile, now); return u, err }},
		{"a shrunk layer", func() (func(), error) { _, u, err := b.declare("enc", spec(2), ByHTTP, now); return u, err }},
		{"shapes declared", func() (func(), error) {
			_, u, err := b.declare("enc", LayerSpec{NumSeeds: 4, InputShape: []int{4}}, ByHTTP, now)
			return u, err
		}},
		{"a seed in a new layer", func() (func(), error) {
			return b.attach(seedKey{"dec", 0}, att("k2"), false, implicit{by: ByKernel}, now)
		}},
		{"a dormant seed germinated", func() (func(), error) { return b.attach(seedKey{"enc", 2}, att("k2"), false, implicit{}, now) }},
		{"a kernel swapped", func() (func(), error) { return b.attach(seedKey{"enc", 1}, att("k3"), true, implicit{}, now) }},
		{"a detach that culls", func() (func(), error) { return b.detach(seedKey{"enc", 1}, "k1", "test", now), nil }},
		{"a detach that drops a direct layer", func() (func(), error) { return b.detach(seedKey{"direct", 0}, "direct", "test", now), nil }},
		{"a state change", func() (func(), error) {
			_, u, err := b.setState(seedKey{"enc", 1}, contracts.SeedTraining, "test", now)
			return u, err
		}},
		{"a dormant seed culled", func() (func(), error) {
			_, u, err := b.setState(seedKey{"enc", 3}, contracts.SeedCulled, "test", now)
			return u, err
		}},
		{"an alpha change", func() (func(), error) { return b.setAlpha(seedKey{"enc", 1}, 0.7, now) }},
		{"a retired layer", func() (func(), error) { _, u, err := b.retire("enc"); return u, err }},
	} {
		undo, err := c.change()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if render(b, now) == before {
			t.Fatalf("%s changed nothing", c.name)
		}
		undo()
		if got := render(b, now); got != before {
			t.Errorf("%s was not undone:\n got %s\nwant %s", c.name, got, before)
		}
	}
}

// A slot holds one seed at a time: unloading culls it into the slot's
// history and leaves a fresh dormant seed (a new seed_id) that takes the
// next kernel; a swap keeps the seed, its state and its alpha.
func TestSeedsAreSlots(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	if _, _, err := b.declare("layer1", spec(4), ByHTTP, now); err != nil {
		t.Fatal(err)
	}
	k := seedKey{"layer1", 2}
	if err := b.attachNow(k, "k1", false, now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.setState(k, contracts.SeedTraining, "test", now); err != nil {
		t.Fatal(err)
	}
	if _, err := b.setAlpha(k, 0.3, now); err != nil {
		t.Fatal(err)
	}
	first := slotOf(t, b, k)
	if err := b.attachNow(k, "k2", false, now); failure.ClassOf(err) != failure.Conflict {
		t.Fatalf("another kernel without swap: %v, want Conflict", err)
	}
	if err := b.attachNow(k, "k2", true, now); err != nil {
		t.Fatal(err)
	}
	swapped := slotOf(t, b, k)
	if swapped.SeedID != first.SeedID || swapped.State != contracts.SeedTraining || swapped.Alpha != 0.3 || *swapped.Kernel != "k2" {
		t.Fatalf("after the swap %+v, want seed %s still training at 0.3 with k2", swapped, first.SeedID)
	}
	b.detach(k, "k2", "kernel k2 unloaded", now)
	fresh := slotOf(t, b, k)
	if fresh.SeedID == first.SeedID || fresh.State != contracts.SeedDormant || fresh.Kernel != nil || fresh.Alpha != 0 {
		t.Fatalf("after the unload %+v, want a fresh dormant seed", fresh)
	}
	if h := fresh.History; len(h) != 1 || h[0].SeedID != first.SeedID || h[0].State != contracts.SeedCulled || h[0].Kernel != "k2" || h[0].Why != "kernel k2 unloaded" {
		t.Fatalf("history %+v, want the culled seed", h)
	}
	if err := b.attachNow(k, "k3", false, now); err != nil {
		t.Fatalf("the slot takes the next kernel: %v", err)
	}
	if s := slotOf(t, b, k); s.State != contracts.SeedGerminated || *s.Kernel != "k3" || len(s.History) != 1 {
		t.Fatalf("reloaded slot %+v", s)
	}
	// Histories are bounded.
	for i := range 2 * maxHistory {
		b.detach(k, b.kernelAt(k), "test", now)
		if err := b.attachNow(k, fmt.Sprint("k", i), false, now); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(slotOf(t, b, k).History); n != maxHistory {
		t.Errorf("history of %d seeds, want %d", n, maxHistory)
	}
}

func (b *layerBook) attachNow(k seedKey, kernel string, swap bool, now time.Time) error {
	_, err := b.attach(k, att(kernel), swap, implicit{}, now)
	return err
}

func slotOf(t *testing.T, b *layerBook, k seedKey) SlotView {
	t.Helper()
	v, ok := b.layerView(k.layer, time.Unix(1_800_000_000, 0), 0)
	if !ok || k.idx >= len(v.Seeds) {
		t.Fatalf("no slot %v", k)
	}
	return v.Seeds[k.idx]
}

// Declarations: new (created), the same again (unchanged), grown, shrunk
// over empty slots; refused when they change the id, drop an occupied
// slot, contradict a loaded kernel's shapes, or take an id in use.
func TestDeclareRules(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	id17 := 17
	d, _, err := b.declare("layer1", LayerSpec{NumSeeds: 4, LayerID: &id17}, ByHTTP, now)
	if err != nil || !d.created || d.id != 17 {
		t.Fatalf("new layer: %+v, %v", d, err)
	}
	if d, _, err := b.declare("layer1", LayerSpec{NumSeeds: 4, LayerID: &id17}, ByHTTP, now); err != nil || d.created || d.changed {
		t.Fatalf("the same declaration again: %+v, %v; want unchanged", d, err)
	}
	if d, _, err := b.declare("layer1", LayerSpec{NumSeeds: 4}, ByHTTP, now); err != nil || d.changed || d.id != 17 {
		t.Fatalf("a declaration without layer_id keeps it: %+v, %v", d, err)
	}
	if err := b.attachNow(seedKey{"layer1", 1}, "k", false, now); err != nil {
		t.Fatal(err)
	}
	if d, _, err := b.declare("layer1", spec(8), ByHTTP, now); err != nil || !d.changed {
		t.Fatalf("grown: %+v, %v", d, err)
	}
	if d, _, err := b.declare("layer1", spec(2), ByHTTP, now); err != nil || !d.changed {
		t.Fatalf("shrunk over empty slots: %+v, %v", d, err)
	}
	if d, _, err := b.declare("layer1", LayerSpec{NumSeeds: 2, InputShape: []int{4}, OutputShape: []int{3}}, ByHTTP, now); err != nil || !d.changed {
		t.Fatalf("shapes the kernel agrees with: %+v, %v", d, err)
	}
	id5 := 5
	b2, _, _ := b.declare("other", LayerSpec{NumSeeds: 1, LayerID: &id5}, ByHTTP, now)
	_ = b2
	for _, c := range []struct {
		name  string
		layer string
		spec  LayerSpec
		class failure.Class
		msg   string
	}{
		{"another id", "layer1", LayerSpec{NumSeeds: 2, LayerID: &id5}, failure.Conflict, `layer "layer1" has layer_id 17; a declaration cannot change it (retire the layer first)`},
		{"a slot that holds a kernel dropped", "layer1", spec(1), failure.Conflict, `num_seeds 1 would drop seed 1 of layer "layer1", which holds kernel "k"; unload it first`},
		{"a shape the kernel contradicts", "layer1", LayerSpec{NumSeeds: 2, OutputShape: []int{7}}, failure.Conflict,
			`output_shape [7] contradicts kernel "k" in seed 1 of layer "layer1", which gives [3]`},
		{"an id in use", "third", LayerSpec{NumSeeds: 1, LayerID: &id17}, failure.Conflict, `layer_id 17 is taken by layer "layer1" on this host`},
		{"no seeds", "x", spec(-1), failure.BadInput, "num_seeds -1: want 1 to 64"},
		{"too many seeds", "x", spec(65), failure.BadInput, "num_seeds 65: want 1 to 64"},
		{"a negative id", "x", LayerSpec{NumSeeds: 1, LayerID: new(-1)}, failure.BadInput, "layer_id -1: want 0 to 2147483647"},
		{"a zero dimension", "x", LayerSpec{NumSeeds: 1, InputShape: []int{4, 0}}, failure.BadInput, "input_shape [4 0]: every dimension must be at least 1"},
		{"an empty name", "", spec(1), failure.BadInput, "layer_name is empty"},
		{"a control character", "a\x00b", spec(1), failure.BadInput, `layer_name "a\x00b": no control characters`},
	} {
		_, _, err := b.declare(c.layer, c.spec, ByHTTP, now)
		if failure.ClassOf(err) != c.class || fmt.Sprint(err) != c.msg {
			t.Errorf("%s: %v (%s), want %q (%s)", c.name, err, failure.ClassOf(err), c.msg, c.class)
		}
	}
	// A kernel whose shapes the layer's declaration contradicts is refused.
	err = b.attachNow(seedKey{"layer1", 0}, "k", false, now) // the same kernel, shapes agree
	if err != nil {
		t.Fatal(err)
	}
	bad := attachment{kernel: "wide", in: []int{8}, out: []int{3}}
	if _, err := b.attach(seedKey{"layer1", 0}, bad, true, implicit{}, now); failure.ClassOf(err) != failure.Refused ||
		fmt.Sprint(err) != `kernel "wide" takes input [8], but layer "layer1" declares input_shape [4]` {
		t.Errorf("a kernel of other shapes: %v", err)
	}
}

// The book's refusals carry their class and name the seed.
func TestLayerBookRefusals(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	if _, _, err := b.declare("l", spec(4), ByHTTP, now); err != nil {
		t.Fatal(err)
	}
	if err := b.attachNow(seedKey{"l", 0}, "k", false, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		err   error
		class failure.Class
		msg   string
	}{
		{"negative index", func() error { return b.attachNow(seedKey{"l", -1}, "k", false, now) }(), failure.BadInput, `seed_idx -1 is out of range: layer "l" has 4 seeds (0 to 3)`},
		{"index beyond num_seeds", func() error { return b.attachNow(seedKey{"l", 4}, "k", false, now) }(), failure.BadInput, `seed_idx 4 is out of range: layer "l" has 4 seeds (0 to 3)`},
		{"unknown layer", func() error { _, _, err := b.setState(seedKey{"x", 0}, contracts.SeedTraining, "", now); return err }(), failure.NotFound, `no layer "x" on this host`},
		{"unknown layer alpha", func() error { _, err := b.setAlpha(seedKey{"x", 0}, 0.5, now); return err }(), failure.NotFound, `no layer "x" on this host`},
		{"illegal transition", func() error { _, _, err := b.setState(seedKey{"l", 0}, contracts.SeedFossilized, "", now); return err }(), failure.Refused, `seed l/0: illegal state transition: "germinated" → "fossilized"`},
		{"a seed that holds another kernel", func() error { return b.attachNow(seedKey{"l", 0}, "other", false, now) }(), failure.Conflict, `seed l/0 already holds kernel "k"; unload it first`},
		{"retire unknown", func() error { _, _, err := b.retire("x"); return err }(), failure.NotFound, `no layer "x" on this host`},
	} {
		if failure.ClassOf(c.err) != c.class || fmt.Sprint(c.err) != c.msg {
			t.Errorf("%s: %v (%s), want %q (%s)", c.name, c.err, failure.ClassOf(c.err), c.msg, c.class)
		}
	}
	// A fossilized seed keeps its kernel: no swap, only an unload.
	for _, st := range []contracts.SeedState{contracts.SeedTraining, contracts.SeedGrafting, contracts.SeedFossilized} {
		if _, _, err := b.setState(seedKey{"l", 0}, st, "", now); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.attachNow(seedKey{"l", 0}, "other", true, now); failure.ClassOf(err) != failure.Refused {
		t.Errorf("a swap into a fossilized seed: %v, want Refused", err)
	}
	b.detach(seedKey{"l", 0}, "k", "test", now)
	if s := slotOf(t, b, seedKey{"l", 0}); s.State != contracts.SeedDormant || s.History[0].State != contracts.SeedFossilized {
		t.Errorf("a fossilized seed unloaded: %+v", s)
	}
}

// The stable layer id is FNV-1a 32 of the name, masked to 31 bits: the
// test vectors COMMANDS.md gives (TestCommandsDocLayerIDsMatchPython
// checks them against Python).
func TestLayerIDOf(t *testing.T) {
	for name, want := range layerIDVectors {
		if got := LayerIDOf(name); got != want {
			t.Errorf("LayerIDOf(%q) = %d, want %d", name, got, want)
		}
	}
	// Two hosts (two books) give one name one id, whatever else they hold.
	a, b := newLayerBook(), newLayerBook()
	now := time.Unix(1_800_000_000, 0)
	for _, n := range []string{"x", "y", "z"} {
		_, _, _ = a.declare(n, spec(1), ByHTTP, now)
	}
	da, _, errA := a.declare("features_0", spec(4), ByHTTP, now)
	db, _, errB := b.declare("features_0", spec(4), ByCommand, now)
	if errA != nil || errB != nil || da.id != db.id || da.id != LayerIDOf("features_0") {
		t.Fatalf("two hosts: ids %d and %d (%v, %v), want %d", da.id, db.id, errA, errB, LayerIDOf("features_0"))
	}
}

// layerIDVectors are COMMANDS.md's test vectors.
var layerIDVectors = map[string]int{
	"0":          890022063,
	"layer1":     1371011397,
	"features_0": 785401261,
	"encoder.1":  303445510,
	"mlp-gelu":   1571334984,
	"naïve":      429525035,
}

// The book is safe for concurrent use (run with -race): changes, views,
// signals and records at once.
func TestLayerBookConcurrentUse(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			layer := fmt.Sprintf("l%d", g)
			for i := range 200 {
				k := seedKey{layer, i % 4}
				kernel := fmt.Sprintf("k%d-%d", g, i%4)
				if _, err := b.attach(k, att(kernel), false, implicit{by: ByKernel}, now); err == nil {
					if in, ok := b.signalInputs(k, kernel); ok {
						b.signalled(k, kernel, contracts.HealthSignal{LayerID: in.layerID, SeedID: k.idx})
					}
					_, _ = b.setAlpha(k, 0.5, now)
					b.detach(k, kernel, "test", now)
				}
				_ = b.seedViews(now, time.Second)
				_ = b.layerViews()
				_, _ = b.layerView(layer, now, time.Second)
				_, _ = b.records()
				_ = b.latestSignals()
			}
		}()
	}
	wg.Wait()
	if n := len(b.layerViews()); n != 4 {
		t.Errorf("%d layers, want 4", n)
	}
}
