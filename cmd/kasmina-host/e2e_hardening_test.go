package main

// End-to-end tests of what a bad disk or a hostile file cannot do to the
// daemon: a named pipe among the kernels or behind a reference, a symbolic
// link out of --kernels, a state directory that stops taking writes, a
// state file this build cannot read, a damaged artifact in the state
// directory, a file reference with no kernel root configured.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/esper/kasmina-host/kernels/examples"
)

// exampleFile copies an embedded example's artifact to path.
func exampleFile(t *testing.T, name, path string) {
	t.Helper()
	b, err := fs.ReadFile(examples.FS, name+".safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// exampleDocRef is an embedded example's CompiledKernel document with
// binary_ref set to ref.
func exampleDocRef(t *testing.T, name, ref string) json.RawMessage {
	t.Helper()
	doc, err := fs.ReadFile(examples.FS, name+".json")
	if err != nil {
		t.Fatal(err)
	}
	return withRef(t, doc, ref)
}

func errorOf(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error
}

// A named pipe among the kernels neither hangs start-up nor requests: it
// is listed as a failed load naming what it is, a reference to it is
// refused at once, and SIGTERM ends the daemon. A symbolic link out of
// --kernels is refused as a file reference leaving the root would be.
func TestDaemonRefusesPipesAndLinksUnderKernels(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "kernels")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exampleFile(t, "seed-linear-64", filepath.Join(dir, "seed-linear-64.safetensors"))
	exampleFile(t, "mlp-gelu", filepath.Join(parent, "outside.safetensors"))
	if err := os.Symlink("../outside.safetensors", filepath.Join(dir, "escape.safetensors")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.safetensors"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonConfig{args: []string{"--kernels", dir}})
	idx := d.index()
	if idx["seed-linear-64"].State != "READY" {
		t.Errorf("seed-linear-64: %+v, want READY", idx["seed-linear-64"])
	}
	for name, want := range map[string]string{
		"pipe":   filepath.Join(dir, "pipe.safetensors") + " is a named pipe (FIFO), not a regular file",
		"escape": filepath.Join(dir, "escape.safetensors") + " leads outside the kernel directory " + dir,
	} {
		if e := idx[name]; e.State == "READY" || e.Reason != want {
			t.Errorf("%s: %+v, want unavailable with reason %q", name, e, want)
		}
	}
	if e, ok := idx["mlp-gelu"]; ok {
		t.Errorf("the kernel behind the link out of --kernels is listed: %+v", e)
	}
	// A reference to the pipe (the kernel root defaults to --kernels).
	start := time.Now()
	code, _, body := d.do("POST", "/v1/kernels", exampleDocRef(t, "seed-linear-64", "pipe.safetensors"), nil)
	if code != 400 || !strings.Contains(errorOf(body), "pipe.safetensors is a named pipe (FIFO), not a regular file") {
		t.Errorf("POST /v1/kernels of a named pipe: %d %s", code, body)
	}
	t.Logf("a reference to a named pipe refused in %v", time.Since(start))
	d.stop()
}

// A token file that is a named pipe stops serve at once with exit 2,
// instead of blocking until a writer comes.
func TestDaemonRefusesATokenFileThatIsAPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runBinary(t, nil, daemonBinary(t), "serve", "--addr", "127.0.0.1:"+strconv.Itoa(freePort(t)),
		"--bus-file", os.DevNull, "--auth-token-file", fifo)
	if code != exitUsage || !strings.Contains(out, fifo+" is a named pipe (FIFO), not a regular file") {
		t.Errorf("exit %d, want 2 naming the pipe:\n%s", code, out)
	}
}

// A change that cannot be saved is refused (503 naming the state error)
// and undone; readiness and the metrics show the store failing until it
// takes writes again; what was acknowledged survives SIGKILL, what was
// refused does not come back.
func TestDaemonRefusesChangesItCannotSave(t *testing.T) {
	root := t.TempDir()
	stateDir := filepath.Join(t.TempDir(), "state")
	lin := exampleDoc(t, root, "seed-linear-64")
	mlp := exampleDoc(t, root, "mlp-gelu")
	seq := exampleDoc(t, root, "seq-layernorm")
	args := []string{"--no-examples", "--kernel-root", root}
	d := startDaemon(t, daemonConfig{stateDir: stateDir, args: args})
	d.json("POST", "/v1/kernels", loadBody(lin, "kept", "", 0), 201, nil)

	// The state directory stops taking writes (a file in its place: root
	// ignores a read-only mode, and a full disk needs a mount).
	if err := os.Rename(stateDir, stateDir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stateDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, h, body := d.do("POST", "/v1/kernels", loadBody(mlp, "refused", "enc", 0), nil)
	if code != 503 || h.Get("Retry-After") == "" || !strings.Contains(errorOf(body), "state directory "+stateDir) {
		t.Errorf("a load that cannot be saved: %d %s, want 503 naming the state directory", code, body)
	}
	code, _, body = d.do("DELETE", "/v1/kernels/kept", nil, nil)
	if code != 503 || !strings.Contains(errorOf(body), "the change was undone") {
		t.Errorf("an unload that cannot be saved: %d %s, want 503", code, body)
	}
	var list struct {
		Kernels []kernelView `json:"kernels"`
	}
	d.json("GET", "/v1/kernels", nil, 200, &list)
	if len(list.Kernels) != 1 || list.Kernels[0].Name != "kept" {
		t.Errorf("kernels after the refused changes: %+v, want only kept", list.Kernels)
	}
	if code, _, body := d.do("POST", "/v2/models/kept/infer", inferJSON([]int{1, 64}, make([]float32, 64)), nil); code != 200 {
		t.Errorf("kept after its refused unload: %d %s", code, body)
	}
	code, _, body = d.do("GET", "/v2/health/ready", nil, nil)
	if code != 503 || !strings.Contains(string(body), "state directory failing") {
		t.Errorf("readiness while the state directory fails: %d %s", code, body)
	}
	metrics := d.scrape()
	if v := metricSum(t, metrics, "kasmina_state_store_failing"); v != 1 {
		t.Errorf("kasmina_state_store_failing = %v, want 1", v)
	}
	if v := metricSum(t, metrics, "kasmina_state_save_failures_total"); v < 2 {
		t.Errorf("kasmina_state_save_failures_total = %v, want at least 2", v)
	}

	// Repaired: ready again without any change, and changes go through.
	if err := os.Remove(stateDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(stateDir+".away", stateDir); err != nil {
		t.Fatal(err)
	}
	if err := d.waitReady(20 * time.Second); err != nil {
		t.Fatalf("not ready again after the state directory was repaired: %v", err)
	}
	d.json("POST", "/v1/kernels", loadBody(seq, "after", "", 0), 201, nil)
	d.kill()

	d2 := startDaemon(t, daemonConfig{stateDir: stateDir, args: args})
	d2.json("GET", "/v1/kernels", nil, 200, &list)
	var names []string
	for _, k := range list.Kernels {
		names = append(names, k.Name)
	}
	if strings.Join(names, ",") != "after,kept" {
		t.Errorf("after SIGKILL and a restart: kernels %v, want after and kept (and not the refused load)", names)
	}
	d2.stop()
}

// A state file this build cannot use stops serve with exit 2 and a message
// naming the file and its version, and is left as it was;
// --state-move-aside renames it and starts fresh.
func TestDaemonRefusesStateFilesItCannotRead(t *testing.T) {
	bin := daemonBinary(t)
	for _, c := range []struct {
		name  string
		write func(path string) error
		want  string
	}{
		{"newer version", func(p string) error {
			return os.WriteFile(p, []byte(`{"version":2,"saved_at":"2030-01-01T00:00:00Z","kernels":[{"name":"from-the-future"}]}`), 0o600)
		}, "has version 2, newer than the version 1 this build reads"},
		{"corrupt JSON", func(p string) error { return os.WriteFile(p, []byte(`{"version":1,"kernels":[`), 0o600) },
			"cannot be read: JSON syntax error at byte 24"},
		{"named pipe", func(p string) error { return syscall.Mkfifo(p, 0o600) },
			"is a named pipe (FIFO), not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			stateDir := t.TempDir()
			path := filepath.Join(stateDir, "state.json")
			if err := c.write(path); err != nil {
				t.Fatal(err)
			}
			var before []byte // the pipe's: none (reading it would block the test)
			if info, err := os.Lstat(path); err == nil && info.Mode().IsRegular() {
				before, _ = os.ReadFile(path)
			}
			out, code := runBinary(t, nil, bin, "serve", "--addr", "127.0.0.1:"+strconv.Itoa(freePort(t)),
				"--bus-file", os.DevNull, "--state-dir", stateDir)
			if code != exitStateRefused || !strings.Contains(out, "state file "+path) || !strings.Contains(out, c.want) ||
				!strings.Contains(out, "--state-move-aside") {
				t.Fatalf("exit %d, want 2 naming %s and %q:\n%s", code, path, c.want, out)
			}
			if info, err := os.Lstat(path); err != nil || info.Mode().IsRegular() != (before != nil) {
				t.Fatalf("the state file changed: %v", err)
			} else if before != nil {
				if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
					t.Fatalf("the state file changed:\n%s\n→\n%s", before, after)
				}
			}
			d := startDaemon(t, daemonConfig{stateDir: stateDir, args: []string{"--state-move-aside"}})
			moved, _ := filepath.Glob(path + ".unreadable-*")
			if len(moved) != 1 {
				t.Fatalf("moved aside: %v", moved)
			}
			if info, err := os.Lstat(moved[0]); err != nil || info.Mode().IsRegular() != (before != nil) {
				t.Errorf("the moved state file is not the original: %v", err)
			} else if before != nil {
				if kept, _ := os.ReadFile(moved[0]); !bytes.Equal(kept, before) {
					t.Errorf("the moved state file differs from the original")
				}
			}
			if idx := d.index(); idx["seed-linear-64"].State != "READY" {
				t.Errorf("after moving the state aside the daemon starts fresh: %+v", idx)
			}
			d.stop()
		})
	}
}

// A damaged artifact in the state directory is not restored: the restart
// lists it as failed with the hashes, and the kernels that did come back
// say they were read from the state directory, and where they were first
// loaded from. The kernels are the embedded examples, loaded with no
// checksum to check them against but the one they are stored under.
func TestDaemonRefusesDamagedArtifacts(t *testing.T) {
	stateDir := t.TempDir()
	d := startDaemon(t, daemonConfig{stateDir: stateDir})
	var lin, mlp kernelView
	d.json("GET", "/v1/kernels/seed-linear-64", nil, 200, &lin)
	d.json("GET", "/v1/kernels/mlp-gelu", nil, 200, &mlp)
	d.stop()

	artifact := filepath.Join(stateDir, "artifacts", lin.SHA256+".kernel")
	b, err := os.ReadFile(artifact)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0x01 // a weight's last byte: the file still parses
	if err := os.WriteFile(artifact, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, daemonConfig{stateDir: stateDir, args: []string{"--no-examples"}})
	var list struct {
		Kernels []struct {
			Name           string `json:"name"`
			Source         string `json:"source"`
			OriginalSource string `json:"original_source"`
		} `json:"kernels"`
		Failed map[string]string `json:"failed"`
	}
	d2.json("GET", "/v1/kernels", nil, 200, &list)
	restored := map[string]bool{}
	for _, k := range list.Kernels {
		restored[k.Name] = true
		if k.Name != "mlp-gelu" {
			continue
		}
		if k.Source != filepath.Join(stateDir, "artifacts", mlp.SHA256+".kernel") || k.OriginalSource != "examples (embedded)/mlp-gelu.safetensors" {
			t.Errorf("restored mlp-gelu: source %q, original_source %q; want the state directory's copy and the embedded examples", k.Source, k.OriginalSource)
		}
	}
	if restored["seed-linear-64"] || !restored["mlp-gelu"] {
		t.Fatalf("kernels after the restart: %+v, want mlp-gelu and not the damaged seed-linear-64", list.Kernels)
	}
	if reason := list.Failed["seed-linear-64"]; !strings.Contains(reason, artifact+" is damaged") || !strings.Contains(reason, "saved as "+lin.SHA256) {
		t.Errorf("failed seed-linear-64: %q, want the damage reported", reason)
	}
	if code, _, _ := d2.do("POST", "/v2/models/seed-linear-64/infer", inferJSON([]int{1, 64}, make([]float32, 64)), nil); code != 404 {
		t.Errorf("the damaged kernel answers %d, want 404", code)
	}
	if logs := d2.stderr.String(); !strings.Contains(logs, "is damaged") {
		t.Errorf("the damage is not logged:\n%s", tail(logs, 2000))
	}
	d2.stop()
}

// With neither --kernels nor --kernel-root there is no kernel root: file
// references are refused with how to configure one, and nothing of the
// file is read, so nothing of it (its hash, its first bytes) shows.
func TestDaemonWithoutAKernelRootRefusesFileReferences(t *testing.T) {
	d := startDaemon(t, daemonConfig{args: []string{"--no-examples"}})
	self, err := os.ReadFile("main.go") // in the daemon's working directory
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"main.go", "./main.go", "/etc/passwd", "file:///etc/passwd"} {
		code, _, body := d.do("POST", "/v1/kernels", exampleDocRef(t, "seed-linear-64", ref), nil)
		msg := errorOf(body)
		if code != 422 || !strings.Contains(msg, "no kernel root is configured (start with --kernel-root DIR or --kernels DIR)") {
			t.Errorf("binary_ref %s: %d %s, want 422 saying no kernel root is configured", ref, code, body)
		}
		for _, leak := range []string{string(self[:8]), sha(self), "root:x", fmt.Sprint(len(self))} {
			if strings.Contains(msg, leak) {
				t.Errorf("binary_ref %s: the error shows %q of the file: %s", ref, leak, msg)
			}
		}
	}
	d.stop()
}
