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

// render is what a change may touch in a book: its layers and seeds.
func render(b *layerBook, now time.Time) string {
	var s strings.Builder
	for _, l := range b.layerViews() {
		fmt.Fprintf(&s, "layer %s=%d (%d seeds); ", l.Name, l.LayerID, l.Seeds)
	}
	for _, v := range b.seedViews(now, 0) {
		fmt.Fprintf(&s, "seed %s/%d id %d %s kernel %q alpha %v transitions %d; ", v.Layer, v.SeedIdx, v.LayerID, v.State, v.Kernel, v.Alpha, len(v.Transitions))
	}
	return s.String()
}

// Every change of the book comes with an undo that puts back exactly what
// it changed: a refused save leaves the book as it was.
func TestLayerBookChangesUndo(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	if _, err := b.attach(seedKey{"enc", 1}, "k1", "bp", now); err != nil {
		t.Fatal(err)
	}
	if _, err := b.attach(seedKey{"direct", 0}, "direct", "", now); err != nil {
		t.Fatal(err)
	}
	before := render(b, now)
	for _, c := range []struct {
		name   string
		change func() (func(), error)
	}{
		{"a new layer", func() (func(), error) { _, u := b.declare("new"); return u, nil }},
		{"an existing layer", func() (func(), error) { _, u := b.declare("enc"); return u, nil }},
		{"a seed in a new layer", func() (func(), error) { return b.attach(seedKey{"dec", 0}, "k2", "", now) }},
		{"a new seed in a known layer", func() (func(), error) { return b.attach(seedKey{"enc", 2}, "k2", "", now) }},
		{"a detach that culls", func() (func(), error) { return b.detach(seedKey{"enc", 1}, "k1", now), nil }},
		{"a detach that drops a direct seed", func() (func(), error) { return b.detach(seedKey{"direct", 0}, "direct", now), nil }},
		{"a state change", func() (func(), error) {
			_, u, err := b.setState(seedKey{"enc", 1}, contracts.SeedTraining, "test", now)
			return u, err
		}},
		{"an alpha change", func() (func(), error) { return b.setAlpha(seedKey{"enc", 1}, 0.7, now) }},
	} {
		undo, err := c.change()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.name != "an existing layer" && render(b, now) == before {
			t.Fatalf("%s changed nothing", c.name)
		}
		undo()
		if got := render(b, now); got != before {
			t.Errorf("%s was not undone:\n got %s\nwant %s", c.name, got, before)
		}
	}
	// Undone layers give their ids back: the next new layer gets id 2.
	if id, _ := b.declare("next"); id != 2 {
		t.Errorf("next layer id %d, want 2", id)
	}
}

// The book's refusals carry their class and name the seed.
func TestLayerBookRefusals(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLayerBook()
	if _, err := b.attach(seedKey{"l", 0}, "k", "", now); err != nil {
		t.Fatal(err)
	}
	b.detach(seedKey{"l", 0}, "k", now) // culled
	for _, c := range []struct {
		name  string
		err   error
		class failure.Class
		msg   string
	}{
		{"negative index", func() error { _, err := b.attach(seedKey{"l", -1}, "k", "", now); return err }(), failure.BadInput, "seed_idx -1 is negative"},
		{"culled seed", func() error { _, err := b.attach(seedKey{"l", 0}, "k", "", now); return err }(), failure.Refused, "seed l/0 is culled and takes no kernel"},
		{"unknown seed state", func() error { _, _, err := b.setState(seedKey{"l", 5}, contracts.SeedTraining, "", now); return err }(), failure.NotFound, "no seed l/5"},
		{"unknown seed alpha", func() error { _, err := b.setAlpha(seedKey{"x", 0}, 0.5, now); return err }(), failure.NotFound, "no seed x/0"},
		{"illegal transition", func() error { _, _, err := b.setState(seedKey{"l", 0}, contracts.SeedTraining, "", now); return err }(), failure.Refused, `seed l/0: illegal state transition: "culled" → "training"`},
	} {
		if failure.ClassOf(c.err) != c.class || fmt.Sprint(c.err) != c.msg {
			t.Errorf("%s: %v (%s), want %q (%s)", c.name, c.err, failure.ClassOf(c.err), c.msg, c.class)
		}
	}
	if _, err := b.attach(seedKey{"l", 1}, "k", "", now); err != nil {
		t.Fatal(err)
	}
	if _, err := b.attach(seedKey{"l", 1}, "other", "", now); failure.ClassOf(err) != failure.Conflict {
		t.Errorf("a seed holding another kernel: %v", err)
	}
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
			for i := range 200 {
				k := seedKey{fmt.Sprintf("l%d", g), i % 4}
				kernel := fmt.Sprintf("k%d-%d", g, i%4)
				if _, err := b.attach(k, kernel, "", now); err == nil {
					if in, ok := b.signalInputs(k, kernel); ok {
						b.signalled(k, kernel, contracts.HealthSignal{LayerID: in.layerID, SeedID: k.idx})
					}
					_, _ = b.setAlpha(k, 0.5, now)
					b.detach(k, kernel, now)
				}
				_ = b.seedViews(now, time.Second)
				_ = b.layerViews()
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
