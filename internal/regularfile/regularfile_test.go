package regularfile

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// within runs fn and fails the test if it has not returned in 10 s: opening
// a FIFO for reading blocks until a writer comes, and a test must not hang.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s blocked for 10 s", what)
	}
}

// specialFiles makes a directory holding one file of each kind.
func specialFiles(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "regular"), []byte("kernel bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "socket"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := os.Mkdir(filepath.Join(dir, "dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenRefusesEverythingButRegularFiles(t *testing.T) {
	dir := specialFiles(t)
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, c := range []struct {
		name string
		kind string // "" for a regular file
	}{
		{"regular", ""},
		{"fifo", "named pipe (FIFO)"},
		{"socket", "socket"},
		{"dir", "directory"},
		{"/dev/null", "character device"},
	} {
		path := c.name
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, c.name)
		}
		opens := map[string]func() ([]byte, error){
			"ReadFile": func() ([]byte, error) { return ReadFile(path, 0) },
		}
		if !filepath.IsAbs(c.name) {
			opens["ReadFileIn"] = func() ([]byte, error) { return ReadFileIn(root, c.name, 0) }
		}
		for how, open := range opens {
			var data []byte
			var err error
			within(t, how+" "+c.name, func() { data, err = open() })
			if c.kind == "" {
				if err != nil || string(data) != "kernel bytes" {
					t.Errorf("%s %s: %q, %v", how, c.name, data, err)
				}
				continue
			}
			var nr *NotRegularError
			if !errors.As(err, &nr) || !errors.Is(err, ErrNotRegular) {
				t.Errorf("%s %s: error %v, want a *NotRegularError", how, c.name, err)
				continue
			}
			if msg := err.Error(); !strings.Contains(msg, c.name) || !strings.Contains(msg, c.kind) {
				t.Errorf("%s %s: %q does not name the path and %q", how, c.name, msg, c.kind)
			}
		}
	}
}

func TestReadFileHoldsTheLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(path, 9); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "10 bytes") {
		t.Errorf("over the limit: %v", err)
	}
	if b, err := ReadFile(path, 10); err != nil || string(b) != "0123456789" {
		t.Errorf("at the limit: %q %v", b, err)
	}
}

func TestFSWalksRegularFilesAndDirectoriesOnly(t *testing.T) {
	dir := specialFiles(t)
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dir", "inner"), []byte("inner"), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	fsys := FS(root)
	got := map[string]string{}
	within(t, "walking the tree", func() {
		err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			f, err := fsys.Open(p)
			if err != nil {
				got[p] = "refused: " + err.Error()
				return nil
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil {
				return err
			}
			got[p] = string(b)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"regular":   "kernel bytes",
		"dir/inner": "inner",
		"fifo":      "refused: fifo is a named pipe (FIFO), not a regular file",
		"socket":    "refused: socket is a socket, not a regular file",
		"escape":    "refused: open escape: leads outside the directory",
	} {
		if !strings.HasPrefix(got[name], want) {
			t.Errorf("%s: %q, want %q…", name, got[name], want)
		}
	}
	if strings.Contains(got["escape"], "secret") && !strings.Contains(got["escape"], "refused") {
		t.Errorf("a symbolic link out of the root was followed: %q", got["escape"])
	}
}
