// Package regularfile opens files for reading only when they are regular
// files. Every path the host reads a file from (the kernel directory, file
// references, the state directory, token and password files) goes through
// it, because opening a named pipe for reading blocks until a writer comes,
// which ties up an OS thread per request and can hang start-up forever, and
// reading a device or a socket is never what a configuration meant.
//
// A file is opened with O_NONBLOCK (so opening a FIFO returns at once) and
// O_CLOEXEC, then checked with fstat on the open descriptor, so that the
// check and the read see the same file (a path checked with stat first
// could be swapped between the two). Anything but a regular file (and,
// where a caller walks a tree, a directory) is refused with an error that
// names the path and what it is.
package regularfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// ErrNotRegular is wrapped by the error for a path that exists but is not a
// regular file (a named pipe, a socket, a device, a directory).
var ErrNotRegular = errors.New("not a regular file")

// NotRegularError says what a refused path is.
type NotRegularError struct {
	// Path is the path as the caller gave it.
	Path string
	// Mode is the file's type bits (fs.ModeNamedPipe, fs.ModeSocket, ...).
	Mode fs.FileMode
}

// Error names the path and its type.
func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is a %s, not a regular file", e.Path, TypeName(e.Mode))
}

// Unwrap makes errors.Is(err, ErrNotRegular) true.
func (e *NotRegularError) Unwrap() error { return ErrNotRegular }

// TypeName names a file type in words ("named pipe (FIFO)", "socket", ...).
func TypeName(m fs.FileMode) string {
	switch t := m.Type(); {
	case t == 0:
		return "regular file"
	case t&fs.ModeDir != 0:
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symbolic link"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeCharDevice != 0:
		return "character device"
	case t&fs.ModeDevice != 0:
		return "block device"
	default:
		return "special file (" + t.String() + ")"
	}
}

// flags are the open flags for reading without blocking on a FIFO.
const flags = os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC

// Open opens path for reading when it is a regular file, and returns the
// file with its FileInfo (from fstat on the open file).
func Open(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, nil, openError(err, path, os.Stat)
	}
	return check(f, path, false)
}

// OpenIn is Open for name inside root: os.Root refuses a path or a symbolic
// link that leaves the root.
func OpenIn(root *os.Root, name string) (*os.File, fs.FileInfo, error) {
	f, err := root.OpenFile(name, flags, 0)
	if err != nil {
		return nil, nil, openError(err, name, root.Stat)
	}
	return check(f, name, false)
}

// openError turns os.Root's error for a path leaving the root into one
// wrapping ErrOutsideRoot, and the error of opening a socket (ENXIO: nothing to open)
// or a device without a driver (ENODEV) into a *NotRegularError naming
// what the path is; other errors are returned as they are.
func openError(err error, path string, stat func(string) (fs.FileInfo, error)) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "escapes") {
		// os.Root's error for leaving the root; its message is the
		// stable part.
		return &fs.PathError{Op: "open", Path: path, Err: ErrOutsideRoot}
	}
	if !errors.Is(err, syscall.ENXIO) && !errors.Is(err, syscall.ENODEV) {
		return err
	}
	if info, serr := stat(path); serr == nil && !info.Mode().IsRegular() {
		return &NotRegularError{Path: path, Mode: info.Mode()}
	}
	return err
}

// check keeps f when fstat says it is a regular file (or, when dirOK, a
// directory) and closes it otherwise.
func check(f *os.File, path string, dirOK bool) (*os.File, fs.FileInfo, error) {
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if info.Mode().IsRegular() || dirOK && info.IsDir() {
		return f, info, nil
	}
	f.Close()
	return nil, nil, &NotRegularError{Path: path, Mode: info.Mode()}
}

// ErrOutsideRoot is wrapped by OpenIn's and FS's error for a path or a
// symbolic link that leads outside the root (os.Root refuses it; its own
// error is not exported).
var ErrOutsideRoot = errors.New("leads outside the directory")

// ErrTooLarge is wrapped by ReadFile's error for a file over its limit.
var ErrTooLarge = errors.New("file too large")

// ReadFile reads the regular file at path whole. A limit > 0 refuses a file
// larger than limit bytes, by its size before reading and while reading
// (should it grow), with an error wrapping ErrTooLarge.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, info, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return read(f, path, info.Size(), limit)
}

// ReadFileIn is ReadFile for name inside root.
func ReadFileIn(root *os.Root, name string, limit int64) ([]byte, error) {
	f, info, err := OpenIn(root, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return read(f, name, info.Size(), limit)
}

// read reads r whole, held to limit (when > 0) before and while reading.
func read(r io.Reader, path string, size, limit int64) ([]byte, error) {
	if limit > 0 && size > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, over the %d-byte limit", ErrTooLarge, path, size, limit)
	}
	if limit <= 0 {
		limit = 1<<63 - 2
	}
	// size is a hint for the first allocation; the read itself stops at
	// limit+1 whatever the size said.
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %s grew past the %d-byte limit while being read", ErrTooLarge, path, limit)
	}
	return data, nil
}

// FS returns a file system for the tree under root whose Open yields only
// regular files and directories (so fs.WalkDir can walk it): a FIFO, a
// socket or a device is refused with a *NotRegularError without blocking,
// and a path or a symbolic link that leaves the root is refused by
// os.Root.
func FS(root *os.Root) fs.FS { return rootFS{root} }

type rootFS struct{ root *os.Root }

// Open implements fs.FS.
func (r rootFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	f, err := r.root.OpenFile(name, flags, 0)
	if err != nil {
		return nil, openError(err, name, r.root.Stat)
	}
	file, _, err := check(f, name, true)
	if err != nil {
		return nil, err
	}
	return file, nil
}

// ReadDir implements fs.ReadDirFS, sorted by name as fs.ReadDir promises.
func (r rootFS) ReadDir(name string) ([]fs.DirEntry, error) {
	return fs.ReadDir(r.root.FS(), name)
}
