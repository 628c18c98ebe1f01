// Package shm is Triton's system shared memory extension on the host's
// side: a registry of regions of POSIX shared memory objects that a client
// on the same node names in its requests instead of sending tensor bytes
// through a socket. Both front ends (oip over HTTP, oipgrpc over gRPC)
// share one Registry, as a region registered over one protocol is usable
// over the other.
//
// A region is a byte range [offset, offset+byte_size) of the object named
// by its key (as given to shm_open: "/name" is /dev/shm/name). Register
// opens the object (read-write when the host may, else read-only, and then
// usable for inputs only), checks with fstat that it is a regular file
// long enough for the range, and maps the range twice: read-only, through
// which inputs are read, and read-write, through which outputs are
// written. Unregister removes the name at once; the mappings and the file
// descriptor go when the last request holding the region (a Lease)
// releases it, so a region unregistered during a request neither breaks
// that request nor leaks.
//
// # A region that shrinks under the host
//
// The client owns the object and may truncate or replace it at any time.
// Touching a mapped page past the end of the file raises SIGBUS, which
// would kill the process. Three things keep that from happening:
//
//   - Register fstats the object before mapping and refuses a range it
//     does not cover.
//   - Every Read and Write fstats the file descriptor again and refuses
//     the access when the object no longer covers the bytes it touches.
//   - The object can still shrink between that fstat and the access. The
//     access runs with debug.SetPanicOnFault(true), so the fault becomes a
//     panic in the goroutine touching the page, which Guard (and Read and
//     Write, which use it) recovers and returns as a failure.BadInput
//     error naming the region. The process and every other request go
//     on. The bytes must therefore be touched only from the guarded
//     goroutine, or from goroutines that raise their faults on it once
//     they have stopped touching the bytes, as package gemm's worker pool
//     does (gemm.FaultsReachCaller), and never kept.
//
// Read and Write copy through a callback. View hands out the mapped bytes
// themselves, for a kernel to read its input where the client put it and
// to write its output where the client will read it, with no copy on the
// host: the caller runs the whole inference under Guard.
//
// An object unlinked (rather than truncated) after registration stays
// usable: the host holds its descriptor, as shm_unlink documents.
//
// Every error is classified (package failure): a request's mistakes are
// BadInput, NotFound (no such region or object), Conflict (a name already
// registered), Refused (an object the host may not open, or an output in a
// read-only region) or TooLarge (over MaxRegions), never Internal.
package shm

import (
	"errors"
	"math"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/esper/kasmina-host/runtime/failure"
)

// Defaults for Options fields left at their zero value.
const (
	DefaultDir        = "/dev/shm"
	DefaultMaxRegions = 1024
	maxNameBytes      = 255 // NAME_MAX, for keys and region names alike
)

// sysOpen is open(2); tests running as root, whom permissions do not stop,
// replace it to see the read-only path.
var sysOpen = unix.Open

// Options configures a Registry.
type Options struct {
	// Dir is where POSIX shared memory objects live (/dev/shm on Linux);
	// a key names a file directly inside it.
	Dir string
	// MaxRegions bounds the regions registered at once (each holds a file
	// descriptor and two mappings).
	MaxRegions int
}

// Registry holds the registered regions. Its methods are safe for
// concurrent use.
type Registry struct {
	dir        string
	maxRegions int

	mu      sync.Mutex
	regions map[string]*region
	closed  bool
}

// New returns an empty registry.
func New(opts Options) *Registry {
	if opts.Dir == "" {
		opts.Dir = DefaultDir
	}
	if opts.MaxRegions <= 0 {
		opts.MaxRegions = DefaultMaxRegions
	}
	return &Registry{dir: opts.Dir, maxRegions: opts.MaxRegions, regions: map[string]*region{}}
}

// Status describes one registered region, as the extension reports it.
type Status struct {
	Name     string
	Key      string
	Offset   uint64
	ByteSize uint64
}

// region is one registered region. refs counts the registration (while
// the name is registered) and every Lease; the mappings go when it drops
// to zero. refs is guarded by Registry.mu.
type region struct {
	Status
	fd   int
	obj  object // the file, to tell when two regions share bytes
	ro   []byte // PROT_READ mapping of [pageStart, Offset+ByteSize)
	rw   []byte // PROT_READ|PROT_WRITE mapping of the same range; nil if read-only
	skew uint64 // Offset − pageStart
	refs int
}

// object identifies a file: two regions with the same object and
// intersecting ranges share bytes.
type object struct{ dev, ino uint64 }

// Register maps the range [offset, offset+byteSize) of the shared memory
// object key under name.
func (r *Registry) Register(name, key string, offset, byteSize uint64) error {
	if err := checkName(name); err != nil {
		return err
	}
	file, err := keyFile(key)
	if err != nil {
		return err
	}
	if byteSize == 0 {
		return failure.Errorf(failure.BadInput, "byte_size: region %q must be at least one byte", name)
	}
	if offset > math.MaxInt64-byteSize {
		return failure.Errorf(failure.BadInput, "offset %d + byte_size %d: region %q overflows a file offset", offset, byteSize, name)
	}
	r.mu.Lock()
	err = r.canAdd(name)
	r.mu.Unlock()
	if err != nil {
		return err
	}

	reg, err := r.open(name, key, file, offset, byteSize)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.canAdd(name); err != nil { // another Register won the race
		reg.unmap()
		return err
	}
	r.regions[name] = reg
	return nil
}

func (r *Registry) canAdd(name string) error {
	switch {
	case r.closed:
		return failure.Errorf(failure.Unavailable, "the host is shutting down; region %q was not registered", name)
	case r.regions[name] != nil:
		return failure.Errorf(failure.Conflict, "a shared memory region named %q is already registered; unregister it first", name)
	case len(r.regions) >= r.maxRegions:
		return failure.Errorf(failure.TooLarge, "%d shared memory regions are registered, the host's limit; unregister one first", len(r.regions))
	}
	return nil
}

// open opens and maps the object; the caller owns the result.
func (r *Registry) open(name, key, file string, offset, byteSize uint64) (*region, error) {
	path := filepath.Join(r.dir, file)
	// O_NOFOLLOW: the key may not lead elsewhere through a link.
	// O_NONBLOCK: opening a FIFO planted under the name must not block.
	const flags = unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
	fd, err := sysOpen(path, unix.O_RDWR|flags, 0)
	writable := err == nil
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) || errors.Is(err, unix.EPERM) {
		fd, err = sysOpen(path, unix.O_RDONLY|flags, 0)
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, failure.Errorf(failure.NotFound, "key %q: no shared memory object %s", key, path)
	case errors.Is(err, unix.ELOOP):
		return nil, failure.Errorf(failure.Refused, "key %q: %s is a symbolic link", key, path)
	case err != nil:
		return nil, failure.Errorf(failure.Refused, "key %q: opening %s: %v", key, path, err)
	}
	reg := &region{Status: Status{Name: name, Key: key, Offset: offset, ByteSize: byteSize}, fd: fd, refs: 1}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		reg.unmap()
		return nil, failure.Errorf(failure.Refused, "key %q: fstat: %v", key, err)
	}
	reg.obj = object{dev: uint64(st.Dev), ino: uint64(st.Ino)}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		reg.unmap()
		return nil, failure.Errorf(failure.Refused, "key %q: %s is not a regular file", key, path)
	}
	if uint64(st.Size) < offset+byteSize {
		reg.unmap()
		return nil, failure.Errorf(failure.BadInput, "offset %d + byte_size %d: the shared memory object %q is only %d bytes", offset, byteSize, key, st.Size)
	}
	page := uint64(unix.Getpagesize())
	start := offset &^ (page - 1)
	length := offset + byteSize - start
	if length > math.MaxInt {
		reg.unmap()
		return nil, failure.Errorf(failure.BadInput, "byte_size %d: region %q is larger than this host can map", byteSize, name)
	}
	reg.skew = offset - start
	if reg.ro, err = unix.Mmap(fd, int64(start), int(length), unix.PROT_READ, unix.MAP_SHARED); err != nil {
		reg.unmap()
		return nil, failure.Errorf(failure.Refused, "key %q: mapping %d bytes: %v", key, length, err)
	}
	if writable {
		if reg.rw, err = unix.Mmap(fd, int64(start), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
			reg.unmap()
			return nil, failure.Errorf(failure.Refused, "key %q: mapping %d bytes for writing: %v", key, length, err)
		}
	}
	return reg, nil
}

// unmap releases what the region holds. Errors are impossible in
// practice for valid mappings and descriptors, and nothing could be done
// about them.
func (g *region) unmap() {
	if g.ro != nil {
		_ = unix.Munmap(g.ro)
		g.ro = nil
	}
	if g.rw != nil {
		_ = unix.Munmap(g.rw)
		g.rw = nil
	}
	if g.fd >= 0 {
		_ = unix.Close(g.fd)
		g.fd = -1
	}
}

// release drops one reference; the caller holds r.mu.
func (r *Registry) release(g *region) {
	g.refs--
	if g.refs == 0 {
		g.unmap()
	}
}

// Unregister removes the region called name. Like Triton, an unknown name
// is not an error. A request holding the region keeps it until it ends.
func (r *Registry) Unregister(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g := r.regions[name]; g != nil {
		delete(r.regions, name)
		r.release(g)
	}
}

// UnregisterAll removes every region.
func (r *Registry) UnregisterAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, g := range r.regions {
		delete(r.regions, name)
		r.release(g)
	}
}

// Close unregisters every region and refuses new registrations; call it
// at shutdown, after the front ends have drained.
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.UnregisterAll()
}

// Status returns the region called name, or every region sorted by name
// when name is empty. An unknown name is NotFound.
func (r *Registry) Status(name string) ([]Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if name != "" {
		g := r.regions[name]
		if g == nil {
			return nil, errNoRegion(name)
		}
		return []Status{g.Status}, nil
	}
	out := make([]Status, 0, len(r.regions))
	for _, g := range r.regions {
		out = append(out, g.Status)
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func errNoRegion(name string) error {
	return failure.Errorf(failure.NotFound, "no shared memory region named %q is registered", name)
}

// Lease holds a region for the length of one request: an unregistration
// meanwhile takes effect for later requests, and the mappings stay until
// Release.
type Lease struct {
	reg *Registry
	g   *region
}

// Acquire holds the region called name; the caller must Release it.
func (r *Registry) Acquire(name string) (*Lease, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.regions[name]
	if g == nil {
		return nil, errNoRegion(name)
	}
	g.refs++
	return &Lease{reg: r, g: g}, nil
}

// Release ends the lease; later calls do nothing.
func (l *Lease) Release() {
	if l == nil || l.g == nil {
		return
	}
	l.reg.mu.Lock()
	l.reg.release(l.g)
	l.reg.mu.Unlock()
	l.g = nil
}

// Name is the region's name.
func (l *Lease) Name() string { return l.g.Name }

// ByteSize is the region's size.
func (l *Lease) ByteSize() uint64 { return l.g.ByteSize }

// Writable reports whether outputs may be written to the region.
func (l *Lease) Writable() bool { return l.g.rw != nil }

// Read calls fn with the bytes [offset, offset+size) of the region, read
// through its read-only mapping. fn must not keep the slice nor hand it to
// another goroutine (see the package documentation).
func (l *Lease) Read(offset, size uint64, fn func([]byte) error) error {
	return l.access(offset, size, false, fn)
}

// Write calls fn with the bytes [offset, offset+size) of the region to
// fill in, through its read-write mapping; a read-only region is Refused.
func (l *Lease) Write(offset, size uint64, fn func([]byte) error) error {
	return l.access(offset, size, true, fn)
}

// View returns the bytes [offset, offset+size) of the region where they
// lie, read-only or (write) to fill in, after the checks Read and Write
// make. They stay mapped until Release; every access to them must happen
// under Guard, on its goroutine or on goroutines that raise their faults
// on it (see the package documentation).
func (l *Lease) View(offset, size uint64, write bool) ([]byte, error) {
	g := l.g
	if g == nil {
		return nil, failure.Errorf(failure.Internal, "shared memory lease used after Release")
	}
	if size > g.ByteSize || offset > g.ByteSize-size {
		return nil, failure.Errorf(failure.BadInput, "shared_memory_offset %d + shared_memory_byte_size %d run past the end of region %q (%d bytes)", offset, size, g.Name, g.ByteSize)
	}
	mem := g.ro
	if write {
		if g.rw == nil {
			return nil, failure.Errorf(failure.Refused, "region %q is read-only to the host (its object %q could not be opened for writing): it can carry inputs, not outputs", g.Name, g.Key)
		}
		mem = g.rw
	}
	var st unix.Stat_t
	if err := unix.Fstat(g.fd, &st); err != nil {
		return nil, failure.Errorf(failure.Internal, "region %q: fstat: %v", g.Name, err)
	}
	if end := g.Offset + offset + size; uint64(st.Size) < end {
		return nil, errShrunk(g, uint64(st.Size), end)
	}
	lo := g.skew + offset
	return mem[lo : lo+size : lo+size], nil
}

// Overlaps reports whether the bytes [offset, offset+size) of l's region
// and [otherOffset, otherOffset+otherSize) of other's share storage: the
// same object, intersecting ranges. Two regions can name one object, so a
// kernel's input and output may alias even when their regions differ.
func (l *Lease) Overlaps(offset, size uint64, other *Lease, otherOffset, otherSize uint64) bool {
	a, b := l.g, other.g
	if a == nil || b == nil || a.obj != b.obj || size == 0 || otherSize == 0 {
		return false
	}
	lo, hi := a.Offset+offset, a.Offset+offset+size
	olo, ohi := b.Offset+otherOffset, b.Offset+otherOffset+otherSize
	return lo < ohi && olo < hi
}

func (l *Lease) access(offset, size uint64, write bool, fn func([]byte) error) error {
	b, err := l.View(offset, size, write)
	if err != nil {
		return err
	}
	return Guard([]*Lease{l}, func() error { return fn(b) })
}

func errShrunk(g *region, now, need uint64) error {
	return failure.Errorf(failure.BadInput, "region %q: its shared memory object %q was truncated to %d bytes under the host; the request needs %d", g.Name, g.Key, now, need)
}

// Guard runs fn with memory faults turned into panics on the calling
// goroutine (debug.SetPanicOnFault), and returns a fault at an address
// inside one of the leased regions' mappings as a failure.BadInput error
// naming that region: its object shrank after the checks of View, Read or
// Write. Any other panic, a fault elsewhere included, goes on as it came.
// Nil leases are ignored.
func Guard(leases []*Lease, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		p := recover()
		if p == nil {
			return
		}
		if re, ok := p.(runtime.Error); ok {
			if f, ok := p.(interface{ Addr() uintptr }); ok {
				for _, l := range leases {
					if l != nil && l.g != nil && l.g.maps(f.Addr()) {
						err = failure.Errorf(failure.BadInput, "region %q: its shared memory object %q shrank while the host was using it (%v)", l.g.Name, l.g.Key, re)
						return
					}
				}
			}
		}
		panic(p)
	}()
	return fn()
}

// maps reports whether addr lies in one of the region's mappings.
func (g *region) maps(addr uintptr) bool {
	for _, m := range [][]byte{g.ro, g.rw} {
		if len(m) > 0 {
			base := uintptr(unsafe.Pointer(&m[0]))
			if addr >= base && addr-base < uintptr(len(m)) {
				return true
			}
		}
	}
	return false
}

// checkName refuses empty and overlong region names and control
// characters, which no log line or URL should carry.
func checkName(name string) error {
	if name == "" {
		return failure.Errorf(failure.BadInput, "name: a shared memory region needs a name")
	}
	if len(name) > maxNameBytes {
		return failure.Errorf(failure.BadInput, "name: %d bytes, more than %d", len(name), maxNameBytes)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return failure.Errorf(failure.BadInput, "name %q: byte %d is a control character", name, i)
		}
	}
	return nil
}

// keyFile returns the file name a key refers to inside the shared memory
// directory, as glibc's shm_open derives it: leading slashes are dropped,
// and what remains must be one path component.
func keyFile(key string) (string, error) {
	f := strings.TrimLeft(key, "/")
	switch {
	case f == "":
		return "", failure.Errorf(failure.BadInput, "key %q: names no shared memory object", key)
	case len(f) > maxNameBytes:
		return "", failure.Errorf(failure.BadInput, "key: %d bytes, more than %d", len(f), maxNameBytes)
	case f == "." || f == "..":
		return "", failure.Errorf(failure.BadInput, "key %q: not a shared memory object name", key)
	case strings.ContainsAny(f, "/\x00"):
		return "", failure.Errorf(failure.BadInput, "key %q: a shared memory object name has no '/' after its leading one", key)
	}
	return f, nil
}
