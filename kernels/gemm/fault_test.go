package gemm

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// workerFault runs a product whose micro-kernel faults (it reads a
// mapped file truncated under it) on every goroutine but the caller's,
// which is locked to its thread and leaves its tasks to the workers. With
// guarded the caller runs with debug.SetPanicOnFault and recovers what
// comes back; it returns what it recovered and the page that faulted.
func workerFault(t *testing.T, guarded bool) (got any, bad unsafe.Pointer) {
	t.Helper()
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
	t.Cleanup(func() { _ = unix.Munmap(mem) })
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	bad = unsafe.Pointer(&mem[0])

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
				_ = *(*float32)(bad) // SIGBUS
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

	if guarded {
		old := debug.SetPanicOnFault(true)
		defer debug.SetPanicOnFault(old)
	}
	got = func() (p any) {
		defer func() { p = recover() }()
		e.run(prob)
		return nil
	}()
	if onWorkers.Load() == 0 {
		t.Fatalf("no worker took a task (the caller took %d): nothing was tested", onCaller.Load())
	}
	return got, bad
}

// TestWorkerFaultReachesCaller: a memory fault in a pool worker (memory
// that vanished: a mapped file truncated under the product) is raised on
// a caller that runs with debug.SetPanicOnFault, once every worker has
// left the product, and the pool goes on serving.
func TestWorkerFaultReachesCaller(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	got, bad := workerFault(t, true)
	fault, ok := got.(interface{ Addr() uintptr })
	if _, isErr := got.(runtime.Error); !ok || !isErr {
		t.Fatalf("the caller recovered %v (%T), want the workers' memory fault", got, got)
	}
	if fault.Addr() != uintptr(bad) {
		t.Fatalf("fault at %#x, want the vanished page %p", fault.Addr(), bad)
	}

	// The pool still serves whole products.
	const n = 256
	a, b, c := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
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

// TestWorkerFaultIsFatalForAnUnguardedCaller: a caller that does not run
// with debug.SetPanicOnFault would die of a fault on its own goroutine; a
// fault in a worker of its product ends the process the same way rather
// than becoming a panic the caller (or net/http around it) recovers.
func TestWorkerFaultIsFatalForAnUnguardedCaller(t *testing.T) {
	if os.Getenv("GEMM_FAULT_CHILD") == "1" {
		got, _ := workerFault(t, false)
		t.Fatalf("the product returned after a worker's fault (recovered %v)", got)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWorkerFaultIsFatalForAnUnguardedCaller$")
	cmd.Env = append(os.Environ(), "GEMM_FAULT_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "fault") || strings.Contains(string(out), "the product returned") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "workRecovering") {
		t.Fatalf("the child did not die in the worker:\n%s", out)
	}
}
