package shm

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/esper/kasmina-host/runtime/failure"
)

// newObject creates a shared memory object of size bytes, byte i holding
// i mod 251, in a fresh directory that stands for /dev/shm.
func newObject(t *testing.T, size int) (dir, key string) {
	t.Helper()
	dir = t.TempDir()
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i % 251)
	}
	if err := os.WriteFile(filepath.Join(dir, "obj"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, "/obj"
}

func wantClass(t *testing.T, err error, c failure.Class, contains string) {
	t.Helper()
	if err == nil || failure.ClassOf(err) != c || !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %v (class %v), want class %v containing %q", err, failure.ClassOf(err), c, contains)
	}
}

func TestRegisterStatusUnregister(t *testing.T) {
	dir, key := newObject(t, 3*4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	if err := r.Register("a", key, 100, 1000); err != nil {
		t.Fatal(err)
	}
	if err := r.Register("b", "obj", 0, 3*4096); err != nil { // no leading slash, as glibc allows
		t.Fatal(err)
	}
	all, err := r.Status("")
	if err != nil {
		t.Fatal(err)
	}
	want := []Status{{"a", "/obj", 100, 1000}, {"b", "obj", 0, 3 * 4096}}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("Status(\"\") = %v, want %v", all, want)
	}
	one, err := r.Status("b")
	if err != nil || len(one) != 1 || one[0] != want[1] {
		t.Fatalf("Status(b) = %v, %v", one, err)
	}
	_, err = r.Status("nope")
	wantClass(t, err, failure.NotFound, `"nope"`)
	wantClass(t, r.Register("a", key, 0, 10), failure.Conflict, "already registered")

	r.Unregister("a")
	r.Unregister("a") // unknown names are not an error, as in Triton
	if all, _ := r.Status(""); len(all) != 1 || all[0].Name != "b" {
		t.Fatalf("after unregistering a: %v", all)
	}
	_, err = r.Acquire("a")
	wantClass(t, err, failure.NotFound, `"a"`)
	r.UnregisterAll()
	if all, _ := r.Status(""); len(all) != 0 {
		t.Fatalf("after UnregisterAll: %v", all)
	}
	r.Close()
	wantClass(t, r.Register("c", key, 0, 1), failure.Unavailable, "shutting down")
}

func TestRegisterRefusals(t *testing.T) {
	dir, key := newObject(t, 4096)
	if err := os.Symlink(filepath.Join(dir, "obj"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, key    string
		offset, size uint64
		class        failure.Class
		contains     string
	}{
		{"", key, 0, 1, failure.BadInput, "needs a name"},
		{"a\nb", key, 0, 1, failure.BadInput, "control character"},
		{strings.Repeat("n", 256), key, 0, 1, failure.BadInput, "more than 255"},
		{"r", "/", 0, 1, failure.BadInput, "names no shared memory object"},
		{"r", "/sub/obj", 0, 1, failure.BadInput, "no '/'"},
		{"r", "/..", 0, 1, failure.BadInput, "not a shared memory object name"},
		{"r", "/" + strings.Repeat("k", 256), 0, 1, failure.BadInput, "more than 255"},
		{"r", "/missing", 0, 1, failure.NotFound, "no shared memory object"},
		{"r", "/link", 0, 1, failure.Refused, "symbolic link"},
		{"r", "/sub", 0, 1, failure.Refused, "opening"},
		{"r", "/fifo", 0, 1, failure.Refused, "not a regular file"},
		{"r", key, 0, 0, failure.BadInput, "at least one byte"},
		{"r", key, 4000, 97, failure.BadInput, "only 4096 bytes"},
		{"r", key, math.MaxUint64, 2, failure.BadInput, "overflows"},
		{"r", key, 1, math.MaxInt64, failure.BadInput, "overflows"},
	}
	r := New(Options{Dir: dir})
	defer r.Close()
	for _, c := range cases {
		t.Run(c.contains, func(t *testing.T) {
			wantClass(t, r.Register(c.name, c.key, c.offset, c.size), c.class, c.contains)
		})
	}
	if all, _ := r.Status(""); len(all) != 0 {
		t.Fatalf("a refused registration left %v", all)
	}
}

func TestReadWriteThroughTheMappings(t *testing.T) {
	dir, key := newObject(t, 3*4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	// An offset off the page boundary: the mapping starts at the page
	// below it.
	const off = 4096 + 5
	l := leased(t, r, "io", key, off, 1000)
	defer l.Release()
	if !l.Writable() || l.Name() != "io" || l.ByteSize() != 1000 {
		t.Fatalf("lease: writable %v, name %q, size %d", l.Writable(), l.Name(), l.ByteSize())
	}
	var got []byte
	if err := l.Read(10, 4, func(b []byte) error { got = append(got, b...); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []byte{byte((off + 10) % 251), byte((off + 11) % 251), byte((off + 12) % 251), byte((off + 13) % 251)}
	if !bytes.Equal(got, want) {
		t.Fatalf("Read = %v, want %v", got, want)
	}
	if err := l.Write(996, 4, func(b []byte) error { copy(b, "DONE"); return nil }); err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(filepath.Join(dir, "obj"))
	if string(file[off+996:off+1000]) != "DONE" || file[off+1000] != byte((off+1000)%251) {
		t.Fatalf("Write landed wrong: %q", file[off+990:off+1004])
	}
	// The callback's error comes back as it is.
	sentinel := errors.New("callback")
	if err := l.Read(0, 1, func([]byte) error { return sentinel }); !errors.Is(err, sentinel) {
		t.Fatalf("callback error: %v", err)
	}
	for _, c := range []struct{ off, size uint64 }{{997, 4}, {1000, 1}, {0, 1001}, {math.MaxUint64, 2}, {2, math.MaxUint64}} {
		wantClass(t, l.Read(c.off, c.size, func([]byte) error { t.Fatal("called"); return nil }), failure.BadInput, "run past the end")
		wantClass(t, l.Write(c.off, c.size, func([]byte) error { t.Fatal("called"); return nil }), failure.BadInput, "run past the end")
	}
	// A zero-length access at the very end is in bounds.
	if err := l.Read(1000, 0, func(b []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyObjectCarriesInputsOnly(t *testing.T) {
	dir, key := newObject(t, 4096)
	// Root opens anything read-write, so the refusal is simulated.
	defer func(o func(string, int, uint32) (int, error)) { sysOpen = o }(sysOpen)
	sysOpen = func(path string, mode int, perm uint32) (int, error) {
		if mode&unix.O_ACCMODE != unix.O_RDONLY {
			return -1, unix.EACCES
		}
		return unix.Open(path, mode, perm)
	}
	r := New(Options{Dir: dir})
	defer r.Close()
	l := leased(t, r, "ro", key, 0, 64)
	defer l.Release()
	if l.Writable() {
		t.Fatal("a read-only object is writable")
	}
	if err := l.Read(0, 64, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	wantClass(t, l.Write(0, 4, func([]byte) error { return nil }), failure.Refused, "read-only to the host")
}

func TestTruncatedMidRequest(t *testing.T) {
	dir, key := newObject(t, 2*4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	l := leased(t, r, "t", key, 4096, 4096)
	defer l.Release()
	path := filepath.Join(dir, "obj")
	for _, size := range []int64{0, 4096, 4096 + 100} {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		// Touching these pages now would be SIGBUS: the fstat check
		// refuses first.
		wantClass(t, l.Read(0, 4096, func(b []byte) error { _ = b[4095]; return nil }), failure.BadInput, "truncated")
		wantClass(t, l.Write(0, 4096, func(b []byte) error { b[4095] = 1; return nil }), failure.BadInput, "truncated")
	}
	// What is still covered stays usable, and a regrown object works again.
	if err := l.Read(0, 100, func(b []byte) error { _ = b[99]; return nil }); err != nil {
		t.Fatalf("covered range: %v", err)
	}
	if err := os.Truncate(path, 2*4096); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(0, 4096, func(b []byte) error { b[4095] = 7; return nil }); err != nil {
		t.Fatalf("regrown: %v", err)
	}
}

// TestFaultDuringUseIsAnError covers the window the fstat check cannot
// close: the object shrinks after View (or Read's check). Guard must turn
// the SIGBUS into an error naming the region, and the process must go on;
// a fault outside the leased regions, and any other panic, is not
// swallowed.
func TestFaultDuringUseIsAnError(t *testing.T) {
	dir, key := newObject(t, 2*4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	l := leased(t, r, "f", key, 0, 2*4096)
	defer l.Release()
	in, err := l.View(0, 2*4096, false)
	if err != nil {
		t.Fatal(err)
	}
	out, err := l.View(0, 2*4096, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "obj"), 0); err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 2*4096)
	for _, mem := range [][]byte{in, out} {
		err := Guard([]*Lease{nil, l}, func() error { copy(dst, mem); return nil })
		wantClass(t, err, failure.BadInput, `region "f": its shared memory object "/obj" shrank while the host was using it`)
	}
	err = Guard([]*Lease{l}, func() error {
		for i := range out {
			out[i] = 0
		}
		return nil
	})
	wantClass(t, err, failure.BadInput, "shrank while the host was using it")
	// Views of the shrunk object are refused before any access.
	if _, err := l.View(0, 4096, false); !failure.Is(err, failure.BadInput) || !strings.Contains(err.Error(), "truncated to 0 bytes") {
		t.Fatalf("View of a shrunk object: %v", err)
	}

	// A fault in memory no lease covers is the caller's bug: it goes on.
	other, key2 := newObject(t, 4096)
	r2 := New(Options{Dir: other})
	defer r2.Close()
	l2 := leased(t, r2, "g", key2, 0, 4096)
	defer l2.Release()
	func() {
		defer func() {
			p := recover()
			if _, ok := p.(interface{ Addr() uintptr }); !ok {
				t.Fatalf("a fault outside the leased regions: recovered %v, want the fault itself", p)
			}
		}()
		_ = Guard([]*Lease{l2}, func() error { copy(dst, in); return nil })
		t.Fatal("Guard returned")
	}()
	defer func() {
		if p := recover(); p != "not a fault" {
			t.Fatalf("recovered %v", p)
		}
	}()
	_ = Guard([]*Lease{l}, func() error { panic("not a fault") })
}

// TestOverlaps: two leases share bytes when their regions name one object
// and the byte ranges, counted from the object's start, intersect.
func TestOverlaps(t *testing.T) {
	dir, key := newObject(t, 4*4096)
	otherDir, otherKey := newObject(t, 4*4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	r2 := New(Options{Dir: otherDir})
	defer r2.Close()
	for name, off := range map[string]uint64{"a": 0, "b": 4096} {
		if err := r.Register(name, key, off, 3*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := r2.Register("elsewhere", otherKey, 0, 3*4096); err != nil {
		t.Fatal(err)
	}
	lease := func(r *Registry, name string) *Lease {
		l, err := r.Acquire(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Release)
		return l
	}
	a, b, e := lease(r, "a"), lease(r, "b"), lease(r2, "elsewhere")
	for _, c := range []struct {
		name       string
		x          *Lease
		xOff, xLen uint64
		y          *Lease
		yOff, yLen uint64
		want       bool
	}{
		{"same region, same bytes", a, 0, 100, a, 0, 100, true},
		{"same region, adjacent", a, 0, 100, a, 100, 100, false},
		{"same region, one byte shared", a, 0, 101, a, 100, 100, true},
		{"two regions of one object, aliased", a, 4096, 16, b, 0, 16, true},
		{"two regions of one object, apart", a, 0, 4096, b, 0, 16, false},
		{"another object at the same offsets", a, 0, 100, e, 0, 100, false},
		{"empty range", a, 0, 0, a, 0, 100, false},
	} {
		if got := c.x.Overlaps(c.xOff, c.xLen, c.y, c.yOff, c.yLen); got != c.want {
			t.Errorf("%s: Overlaps = %v, want %v", c.name, got, c.want)
		}
		if got := c.y.Overlaps(c.yOff, c.yLen, c.x, c.xOff, c.xLen); got != c.want {
			t.Errorf("%s (swapped): Overlaps = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestUnregisterDuringUse(t *testing.T) {
	dir, key := newObject(t, 4096)
	r := New(Options{Dir: dir})
	l := leased(t, r, "u", key, 0, 4096)
	g := l.g
	r.Unregister("u")
	if _, err := r.Acquire("u"); !failure.Is(err, failure.NotFound) {
		t.Fatalf("Acquire after Unregister: %v", err)
	}
	// The request that held it finishes its work.
	if err := l.Read(0, 4096, func(b []byte) error { _ = b[4095]; return nil }); err != nil {
		t.Fatalf("held region after Unregister: %v", err)
	}
	// The name is free again at once, on a fresh mapping.
	if err := r.Register("u", key, 0, 10); err != nil {
		t.Fatal(err)
	}
	if g.ro == nil || g.fd < 0 {
		t.Fatal("the held region was unmapped before its lease ended")
	}
	l.Release()
	l.Release() // twice is harmless
	if g.ro != nil || g.rw != nil || g.fd != -1 {
		t.Fatal("the unregistered region was not unmapped when its last lease ended")
	}
	wantClass(t, l.Read(0, 1, func([]byte) error { return nil }), failure.Internal, "after Release")
	// Close with a lease out: the mapping stays until it is released.
	l2, err := r.Acquire("u")
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := l2.Read(0, 10, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	g2 := l2.g
	l2.Release()
	if g2.ro != nil || g2.fd != -1 {
		t.Fatal("Close leaked a mapping")
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

func TestManyRegions(t *testing.T) {
	dir, key := newObject(t, 64*4096)
	const max = 200
	r := New(Options{Dir: dir, MaxRegions: max})
	before := openFDs(t)
	for i := range max {
		if err := r.Register(fmt.Sprintf("r%03d", i), key, uint64(i)*100, 4096); err != nil {
			t.Fatal(err)
		}
	}
	wantClass(t, r.Register("one-more", key, 0, 1), failure.TooLarge, "limit")
	all, _ := r.Status("")
	if len(all) != max || all[0].Name != "r000" || all[max-1].Name != fmt.Sprintf("r%03d", max-1) {
		t.Fatalf("%d regions listed, first %v", len(all), all[0])
	}
	// Each reads its own bytes.
	for i := 0; i < max; i += 37 {
		l, err := r.Acquire(fmt.Sprintf("r%03d", i))
		if err != nil {
			t.Fatal(err)
		}
		var first byte
		_ = l.Read(0, 1, func(b []byte) error { first = b[0]; return nil })
		l.Release()
		if first != byte(i*100%251) {
			t.Fatalf("region %d reads %d, want %d", i, first, i*100%251)
		}
	}
	if got := openFDs(t); got != before+max {
		t.Fatalf("%d descriptors open, want %d", got, before+max)
	}
	r.Close()
	if got := openFDs(t); got != before {
		t.Fatalf("%d descriptors open after Close, want %d", got, before)
	}
}

// TestConcurrentUse runs requests against a name that is registered and
// unregistered under them (go test -race).
func TestConcurrentUse(t *testing.T) {
	dir, key := newObject(t, 4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				l, err := r.Acquire("c")
				if err != nil {
					if !failure.Is(err, failure.NotFound) {
						t.Error(err)
					}
					continue
				}
				if err := l.Read(0, 4096, func(b []byte) error { copy(buf, b); return nil }); err != nil {
					t.Error(err)
				}
				l.Release()
			}
		}()
	}
	for range 300 {
		if err := r.Register("c", key, 0, 4096); err != nil && !failure.Is(err, failure.Conflict) {
			t.Fatal(err)
		}
		r.Unregister("c")
	}
	close(stop)
	wg.Wait()
}

// FuzzRegisterAndAccess: whatever a client declares at registration and
// in a request, the registry answers with a classified 4xx error or
// touches only bytes inside the object.
func FuzzRegisterAndAccess(f *testing.F) {
	f.Add("r", "/obj", uint64(0), uint64(4096), uint64(0), uint64(4096), int64(8192))
	f.Add("r", "obj", uint64(4095), uint64(2), uint64(1), uint64(1), int64(0))
	f.Add("r", "//obj", uint64(1<<63), uint64(1<<63), uint64(1<<63), uint64(1<<63), int64(100))
	f.Add("", "/../obj", uint64(3), uint64(0), uint64(0), uint64(0), int64(-1))
	f.Add("x\x00", "/obj/", uint64(8191), uint64(1), uint64(0), uint64(1), int64(4096))
	dir, _ := newObjectF(f, 2*4096)
	f.Fuzz(func(t *testing.T, name, key string, offset, size, useOff, useSize uint64, truncateTo int64) {
		path := filepath.Join(dir, "obj")
		if err := os.Truncate(path, 2*4096); err != nil {
			t.Fatal(err)
		}
		r := New(Options{Dir: dir, MaxRegions: 4})
		defer r.Close()
		err := r.Register(name, key, offset, size)
		if err != nil {
			switch failure.ClassOf(err) {
			case failure.BadInput, failure.NotFound, failure.Refused:
			default:
				t.Fatalf("Register(%q, %q, %d, %d): class %v: %v", name, key, offset, size, failure.ClassOf(err), err)
			}
			return
		}
		if offset+size > 2*4096 {
			t.Fatalf("registered [%d, +%d) of an 8192-byte object", offset, size)
		}
		l, err := r.Acquire(name)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
		if truncateTo >= 0 {
			if err := os.Truncate(path, truncateTo%(3*4096)); err != nil {
				t.Fatal(err)
			}
		}
		touch := func(b []byte) error {
			for i := range b {
				b[i]++
			}
			return nil
		}
		for _, err := range []error{l.Read(useOff, useSize, func(b []byte) error { return touch(append([]byte(nil), b...)) }), l.Write(useOff, useSize, touch)} {
			if err != nil && !failure.Is(err, failure.BadInput) {
				t.Fatalf("access [%d, +%d): class %v: %v", useOff, useSize, failure.ClassOf(err), err)
			}
		}
	})
}

func newObjectF(f *testing.F, size int) (string, string) {
	dir, err := os.MkdirTemp("", "shmfuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "obj"), make([]byte, size), 0o600); err != nil {
		f.Fatal(err)
	}
	return dir, "/obj"
}

func TestParseRef(t *testing.T) {
	s := func(v string) *string { return &v }
	n := func(v int64) *int64 { return &v }
	cases := []struct {
		region       *string
		offset, size *int64
		want         Ref
		ok           bool
		err          string
	}{
		{nil, nil, nil, Ref{}, false, ""},
		{s("r"), nil, n(16), Ref{"r", 0, 16}, true, ""},
		{s("r"), n(8), n(16), Ref{"r", 8, 16}, true, ""},
		{s("r"), n(8), nil, Ref{}, false, "shared_memory_byte_size is missing"},
		{nil, nil, n(16), Ref{}, false, "shared_memory_byte_size without shared_memory_region"},
		{nil, n(4), nil, Ref{}, false, "shared_memory_offset without shared_memory_region"},
		{s(""), nil, n(16), Ref{}, false, "shared_memory_region is empty"},
		{s("r"), nil, n(-1), Ref{}, false, "shared_memory_byte_size is negative"},
		{s("r"), n(-1), n(1), Ref{}, false, "shared_memory_offset is negative"},
	}
	for _, c := range cases {
		ref, ok, err := ParseRef("inputs[0].parameters", c.region, c.offset, c.size)
		if c.err != "" {
			if err == nil || !failure.Is(err, failure.BadInput) || !strings.Contains(err.Error(), c.err) || !strings.HasPrefix(err.Error(), "inputs[0].parameters") {
				t.Errorf("case %q: error %v", c.err, err)
			}
			continue
		}
		if err != nil || ok != c.ok || ref != c.want {
			t.Errorf("got %v, %v, %v; want %v, %v", ref, ok, err, c.want, c.ok)
		}
	}
}

func TestHold(t *testing.T) {
	dir, key := newObject(t, 4096)
	r := New(Options{Dir: dir})
	defer r.Close()
	if err := r.Register("r", key, 0, 100); err != nil {
		t.Fatal(err)
	}
	l, err := r.Hold("inputs[0]", Ref{"r", 36, 64})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	_, err = r.Hold("inputs[0]", Ref{"r", 37, 64})
	wantClass(t, err, failure.BadInput, `inputs[0].parameters: shared_memory_offset 37 + shared_memory_byte_size 64 run past the end of region "r" (100 bytes)`)
	_, err = r.Hold("outputs[0]", Ref{"nope", 0, 1})
	wantClass(t, err, failure.NotFound, `outputs[0]: no shared memory region named "nope"`)
	var off *Registry
	_, err = off.Hold("inputs[0]", Ref{"r", 0, 1})
	wantClass(t, err, failure.Unsupported, "inputs[0].parameters.shared_memory_region: system shared memory is not enabled")
	// A refused hold leaves no reference behind: unregistering unmaps.
	g := r.regions["r"]
	r.Unregister("r")
	if g.ro != nil {
		t.Fatal("a refused Hold kept the region mapped")
	}
}

// leased registers region name (key, offset, size) on r and returns a
// lease on it; the caller releases it.
func leased(t *testing.T, r *Registry, name, key string, offset, size uint64) *Lease {
	t.Helper()
	if err := r.Register(name, key, offset, size); err != nil {
		t.Fatal(err)
	}
	l, err := r.Acquire(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
