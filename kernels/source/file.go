package source

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/esper/kasmina-host/internal/regularfile"
)

// File reads kernels from a directory, the kernel root. References are paths
// relative to the root, absolute paths inside it, or file:// URLs of such
// paths. Files are opened through os.OpenRoot, which refuses any ".."
// component or symbolic link that would leave the root, whatever the path
// looks like.
type File struct {
	dir      string // absolute, cleaned
	root     *os.Root
	maxBytes int64
}

// NewFile opens the kernel root dir. maxBytes caps the size of a file
// (0 means DefaultMaxBytes). Close releases the root.
func NewFile(dir string, maxBytes int64) (*File, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("kernel root %q: %w", dir, err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("kernel root: %w", err)
	}
	return &File{dir: abs, root: root, maxBytes: capOrDefault(maxBytes)}, nil
}

// Dir returns the absolute path of the kernel root.
func (f *File) Dir() string { return f.dir }

// Close releases the kernel root.
func (f *File) Close() error { return f.root.Close() }

// Fetch reads the file ref names inside the kernel root.
func (f *File) Fetch(ctx context.Context, ref string) (Blob, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Blob{}, err
	}
	if r.Scheme != SchemeFile {
		return Blob{}, fmt.Errorf("%w: file source cannot fetch %s", ErrUnsupportedScheme, r)
	}
	if err := ctx.Err(); err != nil {
		return Blob{}, err
	}
	rel, err := f.relative(r.Path)
	if err != nil {
		return Blob{}, err
	}
	// Opened without blocking and checked with fstat: a named pipe would
	// otherwise hold the request (and an OS thread) until a writer came.
	file, info, err := regularfile.OpenIn(f.root, rel)
	if err != nil {
		return Blob{}, f.openError(ref, err)
	}
	defer file.Close()
	what := "kernel " + ref
	data, sum, err := readCapped(file, info.Size(), f.maxBytes, what)
	if err != nil {
		return Blob{}, err
	}
	origin := (&url.URL{Scheme: SchemeFile, Path: filepath.ToSlash(filepath.Join(f.dir, rel))}).String()
	return Blob{Data: data, SHA256: sum, Size: int64(len(data)), Origin: origin}, nil
}

// relative turns a reference path into a path relative to the root. An
// absolute path must lie lexically inside the root; os.Root then refuses
// anything that escapes through "..", or through a symbolic link.
func (f *File) relative(p string) (string, error) {
	p = filepath.FromSlash(p)
	if filepath.IsAbs(p) {
		rel, err := filepath.Rel(f.dir, filepath.Clean(p))
		if err != nil || !filepath.IsLocal(rel) {
			return "", fmt.Errorf("%w: %s is outside the kernel root %s", ErrNotAllowed, p, f.dir)
		}
		return rel, nil
	}
	if !filepath.IsLocal(p) {
		return "", fmt.Errorf("%w: %s leaves the kernel root %s", ErrNotAllowed, p, f.dir)
	}
	return p, nil
}

func (f *File) openError(ref string, err error) error {
	var nr *regularfile.NotRegularError
	switch {
	case errors.As(err, &nr):
		return fmt.Errorf("%w: kernel %s is a %s, not a regular file", ErrInvalidRef, ref, regularfile.TypeName(nr.Mode))
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s in kernel root %s", ErrNotFound, ref, f.dir)
	case errors.Is(err, regularfile.ErrOutsideRoot):
		return fmt.Errorf("%w: %s leaves the kernel root %s", ErrNotAllowed, ref, f.dir)
	default:
		return fmt.Errorf("kernel %s: %w", ref, err)
	}
}

// NoRoot is the file source of a host with no kernel root configured: it
// refuses every path and file:// reference, saying how to configure one.
// Without it, a relative path would resolve against whatever directory the
// process happened to start in (/ under many init systems), and a bus
// sender could read any file's hash and first bytes through the errors.
type NoRoot struct {
	// Hint says how to configure a kernel root ("start with --kernel-root
	// DIR or --kernels DIR").
	Hint string
}

// Fetch refuses ref.
func (n NoRoot) Fetch(_ context.Context, ref string) (Blob, error) {
	hint := n.Hint
	if hint == "" {
		hint = "configure a kernel root"
	}
	return Blob{}, fmt.Errorf("%w: %s: file references are refused because no kernel root is configured (%s)", ErrNotAllowed, ref, hint)
}
