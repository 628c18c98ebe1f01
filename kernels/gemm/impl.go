package gemm

import (
	"fmt"
	"os"
	"sync/atomic"
)

// engine is one way of running Sgemm and Linear.
type engine interface {
	name() string
	sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)
	linear(m, n, k int, a []float32, lda int, w []float32, ldw int, c []float32, ldc int, ep Epilogue)
}

// EnvVar names the environment variable read once at init: when set to a
// registered implementation name (for example "portable"), that
// implementation is used instead of the fastest one.
const EnvVar = "KASMINA_GEMM"

var (
	// engines in order of preference; registered at init by the files that
	// build on this platform.
	engines []engine
	active  atomic.Pointer[engine]
)

// register adds an engine; earlier registrations are preferred.
func register(e engine) { engines = append(engines, e) }

func init() {
	registerPlatform()
	registerOpenBLAS()
	register(portableEngine)
	best := engines[0]
	if env := os.Getenv(EnvVar); env != "" {
		for _, e := range engines {
			if e.name() == env {
				best = e
			}
		}
	}
	active.Store(&best)
}

func current() engine { return *active.Load() }

// Implementation reports the implementation Sgemm and Linear use now:
// "avx512", "avx2", "portable" or "openblas".
func Implementation() string { return current().name() }

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
	for _, e := range engines {
		if e.name() == name {
			active.Store(&e)
			return nil
		}
	}
	return fmt.Errorf("%w: implementation %q is not available here (have %v)", ErrBadArgument, name, Implementations())
}
