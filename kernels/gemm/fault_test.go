package gemm

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestWorkerFaultReachesCaller: a memory fault in a pool worker (memory
// that vanished: a mapped file truncated under the product) is raised on
// the goroutine that called the product, once every worker has left it,
// and the pool goes on serving. Only workers touch the vanished page here:
// the calling goroutine is locked to its thread, and the micro-kernel
// faults on any other.
func TestWorkerFaultReachesCaller(t *testing.T) {
	defer runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	page := unix.Getpagesize()
	f, err := os.Create(filepath.Join(t.TempDir(), "vanishing"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(page)); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, page, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	bad := (*float32)(unsafe.Pointer(&mem[0]))

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	caller := unix.Gettid()
	var onWorkers, onCaller atomic.Int32
	e := newPortable()
	for r := range e.kern {
		for c := range e.kern[r] {
			e.kern[r][c] = func(*float32, int, *float32, int, *float32, int, int, int, float32, float32, *float32, int) {
				if unix.Gettid() == caller {
					onCaller.Add(1)
					time.Sleep(200 * time.Microsecond) // leave tasks to the workers
					return
				}
				onWorkers.Add(1)
				_ = *(*float32)(unsafe.Pointer(bad)) // SIGBUS
			}
		}
	}
	const n = 256
	a, b, c := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
	prob := problem{m: n, n: n, k: n, alpha: 1, a: a, lda: n, b: b, ldb: n, c: c, ldc: n}
	// Start the pool and let its workers wait for work: only idle ones
	// are recruited.
	portableEngine.run(prob)
	time.Sleep(20 * time.Millisecond)

	old := debug.SetPanicOnFault(true)
	got := func() (p any) {
		defer func() { p = recover() }()
		e.run(prob)
		return nil
	}()
	debug.SetPanicOnFault(old)
	if onWorkers.Load() == 0 {
		t.Fatalf("no worker took a task (the caller took %d): nothing was tested", onCaller.Load())
	}
	fault, ok := got.(interface{ Addr() uintptr })
	if _, isErr := got.(runtime.Error); !ok || !isErr {
		t.Fatalf("the caller recovered %v (%T), want the workers' memory fault", got, got)
	}
	if fault.Addr() != uintptr(unsafe.Pointer(bad)) {
		t.Fatalf("fault at %#x, want the vanished page %p", fault.Addr(), bad)
	}
	t.Logf("workers faulted %d times, the caller ran %d tasks: %v", onWorkers.Load(), onCaller.Load(), got)

	// The pool still serves whole products.
	for i := range a {
		a[i], b[i] = 1, 2
	}
	Sgemm(false, false, n, n, n, 1, a, n, b, n, 0, c, n)
	for i, v := range c {
		if v != 2*n {
			t.Fatalf("after the fault, c[%d] = %v, want %v", i, v, 2*n)
		}
	}
}
