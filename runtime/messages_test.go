package runtime

import (
	"context"
	"math"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// Each error says its cause once, naming the input, with no class phrase
// in front ("bad input: bad input: kernel name ..." was the old shape).
func TestErrorMessagesNameTheInputOnce(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	ctx := context.Background()
	var resolved atomic.Int64
	h, _, _ := newHost(t, inv, Config{}, withResolver(resolverFunc(func(context.Context, string) (Resolved, error) {
		resolved.Add(1)
		return Resolved{}, failure.Errorf(failure.NotFound, "unexpected")
	})))
	if _, err := h.Load(ctx, LoadRequest{Name: "k", Data: linearKernel(t, "k", nil), Layer: "l"}); err != nil {
		t.Fatal(err)
	}
	cmd := func(p oona.CommandPayload) error { return handle(ctx, h, p) }
	for _, c := range []struct {
		name  string
		err   error
		want  string
		class failure.Class
	}{
		{"a name with a slash", func() error {
			_, err := h.Load(ctx, LoadRequest{Name: "a/b", Data: linearKernel(t, "x", nil)})
			return err
		}(),
			`kernel name "a/b": no control characters, '/', '?' or '#'`, failure.BadInput},
		{"a bus kernel id that is no name", cmd(&oona.LoadKernel{LayerName: "l", SeedIdx: 1, ArtifactID: "a?b"}),
			`kernel name "a?b": no control characters, '/', '?' or '#'`, failure.BadInput},
		{"the same name twice, other content", func() error {
			_, err := h.Load(ctx, LoadRequest{Name: "k", Data: linearKernel(t, "k", nil)})
			if err == nil {
				return nil
			}
			// The artifacts' digests change with the metadata's timestamps.
			return failure.Errorf(failure.ClassOf(err), "%s", regexp.MustCompile(`[0-9a-f]{64}`).ReplaceAllString(err.Error(), "<sha>"))
		}(),
			`kernel "k" is already loaded and differs: its artifact has sha256 <sha>, this one <sha>; it serves layer "l" seed 0, this load names layer "k" seed 0; unload it first or load with replace`, failure.Conflict},
		{"bytes that are no kernel", func() error {
			_, err := h.Load(ctx, LoadRequest{Name: "text", Data: []byte("root:x:0:0:root:/root:/bin/bash\n")})
			return err
		}(), `the artifact: malformed kernel file: the header length at byte 0 exceeds the limit of 16777216 bytes (not a safetensors file)`, failure.Malformed},
		{"an unknown kernel", h.Unload(ctx, "nope"), `no kernel "nope" is loaded`, failure.NotFound},
		{"a seed beyond the layer's", setSeedState(h, "l", 9, contracts.SeedTraining, "test"), `seed_idx 9 is out of range: layer "l" has 4 seeds (0 to 3)`, failure.BadInput},
		{"an unknown layer", setSeedState(h, "nolayer", 0, contracts.SeedTraining, "test"), `no layer "nolayer" on this host`, failure.NotFound},
		{"alpha NaN", setAlpha(h, "l", 0, math.NaN()), `seed l/0: alpha is NaN`, failure.BadInput},
		{"an illegal transition", setSeedState(h, "l", 0, contracts.SeedFossilized, "test"),
			`seed l/0: illegal state transition: "germinated" → "fossilized"`, failure.Refused},
		{"a model not in the repository", h.LoadModel(ctx, "absent"), `no kernel "absent" in the repository`, failure.NotFound},
		{"a seed that holds another kernel", func() error {
			_, err := h.Load(ctx, LoadRequest{Name: "k2", Data: linearKernel(t, "k2", nil), Layer: "l"})
			return err
		}(), `seed l/0 already holds kernel "k"; unload it first`, failure.Conflict},
	} {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if c.err.Error() != c.want || failure.ClassOf(c.err) != c.class {
			t.Errorf("%s:\n got %q (%s)\nwant %q (%s)", c.name, c.err, failure.ClassOf(c.err), c.want, c.class)
		}
		for _, phrase := range []string{"bad input", "not found:", "kernel refused", "artifact fetch failed"} {
			if strings.Contains(c.err.Error(), phrase) {
				t.Errorf("%s: %q carries the class phrase %q", c.name, c.err, phrase)
			}
		}
	}
	if n := resolved.Load(); n != 0 {
		t.Errorf("Urza was asked %d times about a name that is not valid", n)
	}
}

type resolverFunc func(ctx context.Context, id string) (Resolved, error)

func (f resolverFunc) Resolve(ctx context.Context, id string) (Resolved, error) {
	return f(ctx, id)
}
