package oona

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestEntryQueueIsFIFO drives the block queue with random pushes and pops
// across many block boundaries and compares it with a slice.
func TestEntryQueueIsFIFO(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var q entryQueue
	var model []string
	next := 0
	for step := 0; step < 200_000; step++ {
		// Phases that grow, drain and hover, so blocks fill and empty.
		pushBias := []int{8, 2, 5}[step/5000%3]
		if len(model) == 0 || rng.IntN(10) < pushBias {
			id := strconv.Itoa(next)
			next++
			q.push(entry{vals: [numFields]string{id}})
			model = append(model, id)
		} else {
			e := q.pop()
			got := e.eventID()
			if got != model[0] {
				t.Fatalf("step %d: popped %s, want %s", step, got, model[0])
			}
			model = model[1:]
		}
		if q.len() != len(model) {
			t.Fatalf("step %d: len %d, want %d", step, q.len(), len(model))
		}
		if want := (q.head + q.n + queueBlock - 1) / queueBlock; q.n > 0 && len(q.blocks) != want {
			t.Fatalf("step %d: %d blocks for %d entries from %d", step, len(q.blocks), q.n, q.head)
		}
	}
	for len(model) > 0 {
		if e := q.pop(); e.eventID() != model[0] {
			t.Fatalf("drain: popped %s, want %s", e.eventID(), model[0])
		}
		model = model[1:]
	}
	if len(q.blocks) > 1 || q.head != 0 {
		t.Fatalf("drained queue keeps %d blocks, head %d", len(q.blocks), q.head)
	}
}
