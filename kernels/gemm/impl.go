package gemm

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
)

// engine is one way of running Sgemm and Linear.
type engine interface {
	name() string
	// faultsReachCaller reports whether a memory fault while the engine
	// touches its operands is raised on the calling goroutine (see
	// FaultsReachCaller).
	faultsReachCaller() bool
	sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)
	linear(m, n, k int, a []float32, lda int, w []float32, ldw int, c []float32, ldc int, ep Epilogue)
}

// EnvVar names the environment variable read once at init: when set to a
// registered implementation name (for example "portable"), that
// implementation is used instead of the fastest one. Any other value
// leaves the fastest one in use and is reported by EnvError.
const EnvVar = "KASMINA_GEMM"

var (
	// engines in order of preference; registered at init by the files that
	// build on this platform.
	engines []engine
	active  atomic.Pointer[engine]
	// envErr is the reason EnvVar's value was not used, nil when it was
	// (or was unset).
	envErr error
)

// register adds an engine; earlier registrations are preferred.
func register(e engine) { engines = append(engines, e) }

func init() {
	registerPlatform()
	registerOpenBLAS()
	register(portableEngine)
	best := engines[0]
	if env := os.Getenv(EnvVar); env != "" {
		if e, ok := lookup(env); ok {
			best = e
		} else {
			envErr = fmt.Errorf("%s=%q names no GEMM implementation available in this build on this CPU (accepted: %s)", EnvVar, env, strings.Join(Implementations(), ", "))
		}
	}
	active.Store(&best)
}

// EnvError returns the error for a KASMINA_GEMM value that names no
// implementation available here, which init ignored (keeping the fastest
// one); nil when the variable is unset or valid. A program that honours the
// variable should refuse to start on it: a typo would otherwise silently
// run another implementation than the one asked for.
func EnvError() error { return envErr }

func lookup(name string) (engine, bool) {
	for _, e := range engines {
		if e.name() == name {
			return e, true
		}
	}
	return nil, false
}

func current() engine { return *active.Load() }

// Implementation reports the implementation Sgemm and Linear use now:
// "avx512", "avx2", "portable" or "openblas".
func Implementation() string { return current().name() }

// FaultsReachCaller reports whether a memory fault while the current
// implementation reads or writes its operands is raised as a panic on the
// goroutine that called Sgemm or Linear, once nothing touches them any
// more, when that goroutine runs with debug.SetPanicOnFault: true for the
// Go implementations, whose worker pool carries its workers' faults to
// such a caller; false for OpenBLAS, whose threads are C's and whose
// faults end the process. Memory that can vanish under the host
// (a shared memory region its client may truncate) may be handed to Sgemm
// and Linear only when it is true, by a caller that runs them with
// debug.SetPanicOnFault and recovers the fault.
func FaultsReachCaller() bool { return current().faultsReachCaller() }

// Implementations lists the implementations available in this build on this
// CPU, fastest (the default) first.
func Implementations() []string {
	out := make([]string, len(engines))
	for i, e := range engines {
		out[i] = e.name()
	}
	return out
}

// Use switches every later Sgemm and Linear call to the named
// implementation (one of Implementations). Calls already running finish on
// the old one. An unknown or unavailable name is an error and changes
// nothing.
func Use(name string) error {
	if e, ok := lookup(name); ok {
		active.Store(&e)
		return nil
	}
	return fmt.Errorf("%w: implementation %q is not available here (have %v)", ErrBadArgument, name, Implementations())
}
