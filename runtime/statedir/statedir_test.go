package statedir

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/esper/kasmina-host/internal/regularfile"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// doc is a stand-in for the host's state.
type doc struct {
	Version int      `json:"version"`
	Kernels []string `json:"kernels"`
}

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readDoc(t *testing.T, s *Store) doc {
	t.Helper()
	var d doc
	if found, err := s.Read(&d, 1); err != nil || !found {
		t.Fatalf("reading the state back: found %v, %v", found, err)
	}
	return d
}

// A state is written before Save returns, and a write that fails is
// returned (so the host refuses the change), counted and flagged until a
// write succeeds again.
func TestSaveWritesAndReturnsFailuresAndRecovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir)
	if err := s.Save(doc{Version: 1, Kernels: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if d := readDoc(t, s); strings.Join(d.Kernels, ",") != "a" {
		t.Fatalf("state after a write-through change: %+v", d)
	}

	// The directory goes away (a file stands in its place): every write
	// fails, whoever runs the test (root ignores a read-only mode).
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := s.Save(doc{Version: 1, Kernels: []string{"a", "b"}})
	if err == nil || !strings.Contains(err.Error(), "state directory "+dir+": writing state.json") {
		t.Fatalf("Save on a broken directory: %v, want the write error naming the directory", err)
	}
	if s.Err() == nil {
		t.Error("Err is nil while writes fail")
	}
	if err := s.Put(strings.Repeat("ab", 32), []byte("kernel")); err == nil {
		t.Error("Put succeeded on a broken directory")
	}
	if got := testutil.ToFloat64(s.failing); got != 1 {
		t.Errorf("kasmina_state_store_failing = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.failures); got != 2 {
		t.Errorf("kasmina_state_save_failures_total = %v, want 2 (the state and the artifact)", got)
	}

	// Repaired: the next save (the host retries) writes, and clears Err.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	if s.Err() == nil {
		t.Error("Err cleared before a write succeeded")
	}
	if err := s.Save(doc{Version: 1, Kernels: []string{"a", "b"}}); err != nil || s.Err() != nil {
		t.Fatalf("Save on the repaired directory: %v, Err %v", err, s.Err())
	}
	if d := readDoc(t, s); strings.Join(d.Kernels, ",") != "a,b" {
		t.Errorf("state after recovery: %+v, want the last state saved", d)
	}
	if got := testutil.ToFloat64(s.failing); got != 0 {
		t.Errorf("kasmina_state_store_failing = %v after recovery, want 0", got)
	}
}

// A state file this build cannot use is reported, naming the file and its
// version, and left untouched; MoveAside keeps it under another name.
func TestReadRefusesUnusableStateFiles(t *testing.T) {
	for _, c := range []struct {
		name    string
		write   func(path string) error
		version int
		want    string
	}{
		{"newer version", func(p string) error {
			return os.WriteFile(p, []byte(`{"version":2,"kernels":["x"],"new_field":{}}`), 0o600)
		},
			2, "has version 2, newer than the version 1 this build reads"},
		{"corrupt JSON", func(p string) error { return os.WriteFile(p, []byte(`{"version":1,"kernels":["x"`), 0o600) },
			0, "cannot be read: JSON syntax error at byte 27"},
		{"wrong member type", func(p string) error { return os.WriteFile(p, []byte(`{"version":1,"kernels":"secret"}`), 0o600) },
			1, "(version 1) cannot be read: json: cannot unmarshal"},
		{"no version", func(p string) error { return os.WriteFile(p, []byte(`{"kernels":[]}`), 0o600) },
			0, "cannot be read: no version member"},
		{"named pipe", func(p string) error { return syscall.Mkfifo(p, 0o600) },
			0, "is a named pipe (FIFO), not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			if err := c.write(s.Path()); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(s.Path())
			var d doc
			var found bool
			var err error
			done := make(chan struct{})
			go func() { defer close(done); found, err = s.Read(&d, 1) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Read blocked for 10 s")
			}
			var ue *UnreadableError
			if !found || !errors.As(err, &ue) {
				t.Fatalf("Read: found %v, %v; want an *UnreadableError", found, err)
			}
			if ue.Version != c.version || !strings.Contains(err.Error(), s.Path()) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q (version %d), want the path, version %d and %q", err, ue.Version, c.version, c.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q quotes the file's content", err)
			}
			after, _ := os.Lstat(s.Path())
			if after == nil || !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
				t.Error("Read changed the state file")
			}
			moved, err := s.MoveAside()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(moved); err != nil || !strings.HasPrefix(moved, s.Path()+".unreadable-") {
				t.Errorf("moved aside to %q: %v", moved, err)
			}
			if found, err := s.Read(&d, 1); found || err != nil {
				t.Errorf("after MoveAside: found %v, %v; want a fresh start", found, err)
			}
		})
	}
}

// Artifacts are kept by content hash and read back only from regular
// files; a damaged copy is written again by the next Put of those bytes.
func TestArtifacts(t *testing.T) {
	s := openStore(t, t.TempDir())
	data := []byte("kernel bytes")
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if err := s.Put(sha, data); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(sha); err != nil || string(got) != string(data) {
		t.Fatalf("Get: %q %v", got, err)
	}
	if err := os.WriteFile(s.Where(sha), []byte("kernel bytez"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(sha, data); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(sha); string(got) != string(data) {
		t.Errorf("a damaged artifact was kept: %q", got)
	}
	for _, bad := range []string{"", "../state", strings.Repeat("AB", 32), sha[:63]} {
		if _, err := s.Get(bad); err == nil || !strings.Contains(err.Error(), "not a lowercase hex SHA-256") {
			t.Errorf("Get(%q): %v", bad, err)
		}
	}
	fifo := strings.Repeat("cd", 32)
	if err := syscall.Mkfifo(s.Where(fifo), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(fifo); !errors.Is(err, regularfile.ErrNotRegular) {
		t.Errorf("Get of a named pipe: %v", err)
	}
}

// A write leaves no temporary file behind and the document is whole JSON,
// whatever the saves running at once (the host serialises its own; Save
// serialises the writes too).
func TestWritesAreWholeAndLeaveNoTemporaryFiles(t *testing.T) {
	s := openStore(t, t.TempDir())
	var mu sync.Mutex
	var kernels []string
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			kernels = append(kernels, string(rune('a'+i)))
			d := doc{Version: 1, Kernels: slices.Clone(kernels)}
			err := s.Save(d)
			mu.Unlock()
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	raw, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	var d doc
	if err := json.Unmarshal(raw, &d); err != nil || len(d.Kernels) != 8 {
		t.Fatalf("state file %s: %v", raw, err)
	}
	entries, _ := os.ReadDir(s.Dir())
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}
