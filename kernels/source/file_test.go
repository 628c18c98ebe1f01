package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/esper/kasmina-host/kernels"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// kernelRoot lays out:
//
//	parent/secret                 outside the root
//	parent/root/k.safetensors
//	parent/root/sub/n.safetensors
//	parent/root/big               over the cap
//	parent/root/out -> ../secret  symlink leaving the root
//	parent/root/outdir -> ..      directory symlink leaving the root
//	parent/root/in -> sub/n.safetensors  symlink staying inside
func kernelRoot(t *testing.T) (parent, root string) {
	t.Helper()
	parent = t.TempDir()
	root = filepath.Join(parent, "root")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub"), 0o755))
	must(os.WriteFile(filepath.Join(parent, "secret"), []byte("secret"), 0o644))
	must(os.WriteFile(filepath.Join(root, "k.safetensors"), []byte("kernel-k"), 0o644))
	must(os.WriteFile(filepath.Join(root, "sub", "n.safetensors"), []byte("kernel-n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "big"), make([]byte, 65), 0o644))
	must(os.Symlink("../secret", filepath.Join(root, "out")))
	must(os.Symlink("..", filepath.Join(root, "outdir")))
	must(os.Symlink("sub/n.safetensors", filepath.Join(root, "in")))
	return parent, root
}

func TestFileFetchesInsideRoot(t *testing.T) {
	_, root := kernelRoot(t)
	f, err := NewFile(root, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		ref, want, origin string
	}{
		{"k.safetensors", "kernel-k", "k.safetensors"},
		{"sub/n.safetensors", "kernel-n", "sub/n.safetensors"},
		{"sub/../k.safetensors", "kernel-k", "k.safetensors"},
		{filepath.Join(root, "sub", "n.safetensors"), "kernel-n", "sub/n.safetensors"},
		{"file://" + filepath.ToSlash(filepath.Join(root, "k.safetensors")), "kernel-k", "k.safetensors"},
		{"in", "kernel-n", "in"},
	}
	for _, tt := range tests {
		b, err := f.Fetch(context.Background(), tt.ref)
		if err != nil {
			t.Errorf("Fetch(%q): %v", tt.ref, err)
			continue
		}
		if string(b.Data) != tt.want || b.Size != int64(len(tt.want)) || b.SHA256 != sha([]byte(tt.want)) {
			t.Errorf("Fetch(%q) = %q (%d bytes, %s)", tt.ref, b.Data, b.Size, b.SHA256)
		}
		if want := "file://" + filepath.ToSlash(filepath.Join(root, tt.origin)); b.Origin != want {
			t.Errorf("Fetch(%q) origin %q, want %q", tt.ref, b.Origin, want)
		}
	}
}

func TestFileRefusesEscapes(t *testing.T) {
	parent, root := kernelRoot(t)
	f, err := NewFile(root, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		ref     string
		wantErr error
	}{
		{"../secret", ErrNotAllowed},
		{"sub/../../secret", ErrNotAllowed},
		{filepath.Join(parent, "secret"), ErrNotAllowed},
		{root + "/../secret", ErrNotAllowed},
		{"file://" + filepath.ToSlash(filepath.Join(parent, "secret")), ErrNotAllowed},
		{"/etc/passwd", ErrNotAllowed},
		{"out", ErrNotAllowed},           // symlink to a file outside
		{"outdir/secret", ErrNotAllowed}, // through a directory symlink outside
		{"missing.safetensors", ErrNotFound},
		{"big", ErrTooLarge},
		{"sub", ErrInvalidRef}, // a directory
		{"https://h/k", ErrUnsupportedScheme},
	}
	for _, tt := range tests {
		b, err := f.Fetch(context.Background(), tt.ref)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Fetch(%q) = %q, %v; want %v", tt.ref, b.Data, err, tt.wantErr)
			continue
		}
		if strings.Contains(string(b.Data), "secret") {
			t.Errorf("Fetch(%q) leaked the secret", tt.ref)
		}
	}
}

func TestFileHonoursCancelledContext(t *testing.T) {
	_, root := kernelRoot(t)
	f, err := NewFile(root, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.Fetch(ctx, "k.safetensors"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestNewFileMissingRoot(t *testing.T) {
	if _, err := NewFile(filepath.Join(t.TempDir(), "nope"), 0); err == nil {
		t.Fatal("NewFile on a missing directory succeeded")
	}
}

func TestFetchVerified(t *testing.T) {
	_, root := kernelRoot(t)
	f, err := NewFile(root, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	good := sha([]byte("kernel-k"))
	if _, err := FetchVerified(context.Background(), f, "k.safetensors", good); err != nil {
		t.Fatalf("matching checksum: %v", err)
	}
	if _, err := FetchVerified(context.Background(), f, "k.safetensors", strings.ToUpper(good)); err != nil {
		t.Fatalf("upper-case checksum: %v", err)
	}
	if _, err := FetchVerified(context.Background(), f, "k.safetensors", ""); err != nil {
		t.Fatalf("no checksum: %v", err)
	}
	wrong := sha([]byte("other"))
	b, err := FetchVerified(context.Background(), f, "k.safetensors", wrong)
	if !errors.Is(err, kernels.ErrChecksumMismatch) {
		t.Fatalf("err = %v, want ErrChecksumMismatch", err)
	}
	if !strings.Contains(err.Error(), good) || !strings.Contains(err.Error(), wrong) {
		t.Errorf("mismatch error %q does not name both hashes", err)
	}
	if b.Data != nil {
		t.Error("mismatched bytes were returned")
	}
	if _, err := FetchVerified(context.Background(), f, "k.safetensors", "abc"); err == nil || errors.Is(err, kernels.ErrChecksumMismatch) {
		t.Errorf("malformed expected checksum: %v", err)
	}
}

// A named pipe behind a file reference is refused at once, naming what it
// is: opening it for reading would block until a writer came, holding the
// request and an OS thread.
func TestFileRefusesNamedPipesWithoutBlocking(t *testing.T) {
	_, root := kernelRoot(t)
	if err := syscall.Mkfifo(filepath.Join(root, "pipe.safetensors"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(root, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() { _, err := f.Fetch(context.Background(), "pipe.safetensors"); done <- err }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("fetching a named pipe blocked for 10 s")
	}
	if !errors.Is(err, ErrInvalidRef) || !strings.Contains(err.Error(), "pipe.safetensors is a named pipe (FIFO), not a regular file") {
		t.Fatalf("error %v, want ErrInvalidRef naming the pipe", err)
	}
}

func TestNoRootRefusesFileReferences(t *testing.T) {
	for _, ref := range []string{"/etc/passwd", "file:///etc/passwd", "k.safetensors"} {
		_, err := NoRoot{Hint: "start with --kernel-root DIR"}.Fetch(context.Background(), ref)
		if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "no kernel root is configured (start with --kernel-root DIR)") {
			t.Errorf("%s: %v", ref, err)
		}
	}
}
