package runtime

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// COMMANDS.md's layer-id section: its test vectors are what LayerIDOf
// gives, and its Python snippet, run with python3, gives the same ids for
// the vectors and for names Go's function is asked about here.
func TestCommandsDocLayerIDsMatchPython(t *testing.T) {
	doc, err := os.ReadFile("oona/COMMANDS.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start := strings.Index(text, "## Layer ids")
	if start < 0 {
		t.Fatal(`COMMANDS.md has no "## Layer ids" section`)
	}
	section := text[start:]
	section = section[:strings.Index(section[3:], "\n## ")+3]
	vectors := map[string]int{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\| (\\d+) \\|$").FindAllStringSubmatch(section, -1) {
		id, _ := strconv.Atoi(m[2])
		vectors[m[1]] = id
	}
	if len(vectors) < 5 {
		t.Fatalf("COMMANDS.md gives %d test vectors: %v", len(vectors), vectors)
	}
	for name, id := range vectors {
		if got := LayerIDOf(name); got != id {
			t.Errorf("COMMANDS.md: %q → %d, LayerIDOf gives %d", name, id, got)
		}
	}
	for name, id := range layerIDVectors {
		if vectors[name] != id {
			t.Errorf("TestLayerIDOf's vector %q → %d is not in COMMANDS.md (%d)", name, id, vectors[name])
		}
	}
	m := regexp.MustCompile("(?s)```python\n(.*?)```").FindStringSubmatch(section)
	if m == nil {
		t.Fatal("COMMANDS.md's layer-id section has no python block")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skipf("*** SKIPPING: python3 not found; COMMANDS.md's Python snippet was NOT checked against Go ***")
	}
	names := []string{"", "a", "layer1", "features_0", "encoder.layers.11.mlp", "naïve", "日本語", strings.Repeat("x", 300), "0", "99"}
	for n := range vectors {
		names = append(names, n)
	}
	arg, _ := json.Marshal(names)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	script := m[1] + "\nimport json, sys\nprint(json.dumps([layer_id(n) for n in json.loads(sys.argv[1])]))\n"
	out, err := exec.CommandContext(ctx, py, "-c", script, string(arg)).Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var ids []int
	if err := json.Unmarshal(out, &ids); err != nil || len(ids) != len(names) {
		t.Fatalf("python3 printed %q: %v", out, err)
	}
	for i, n := range names {
		if ids[i] != LayerIDOf(n) {
			t.Errorf("%q: Python %d, Go %d", n, ids[i], LayerIDOf(n))
		}
	}
}
