package gemm

import (
	"runtime"
	"sync"
	"time"
)

// FMAPeak is a measured float32 FMA throughput.
type FMAPeak struct {
	ISA     string  // vector instructions used: "avx512", "avx2" or "" when none is available
	Threads int     // goroutines (each locked to an OS thread) that ran the loop
	GFLOPS  float64 // 2 flops per lane per FMA, summed over threads
}

// MeasureFMAPeak runs a loop of independent vector FMAs (the widest this
// CPU has) on threads goroutines for about d and reports the throughput: the
// machine's float32 peak against which the GEMM is judged. It blocks for d.
func MeasureFMAPeak(threads int, d time.Duration) FMAPeak {
	isa, loop, flopsPerIter := fmaLoop()
	p := FMAPeak{ISA: isa, Threads: threads}
	if loop == nil || threads < 1 {
		return p
	}
	const chunk = 1 << 16
	var wg sync.WaitGroup
	rates := make([]float64, threads)
	for t := range threads {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			loop(chunk) // warm up the vector unit
			start := time.Now()
			n := 0
			for time.Since(start) < d {
				loop(chunk)
				n += chunk
			}
			rates[t] = float64(n) * flopsPerIter / time.Since(start).Seconds() / 1e9
		})
	}
	wg.Wait()
	for _, r := range rates {
		p.GFLOPS += r
	}
	return p
}
