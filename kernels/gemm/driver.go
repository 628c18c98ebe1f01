package gemm

import (
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Flags passed to the micro-kernels.
const (
	flagLoadC = 1 // add beta*C (otherwise C is only written)
	flagBias  = 2 // add bias[j] to column j
	flagReLU  = 4 // max(x, 0) before the store
)

// nr is the number of output columns (rows of Bᵀ) one micro-tile covers.
const nr = 4

// kernFn computes nt consecutive micro-tiles of rows×cols outputs (rows and
// cols fixed per function, cols ≤ nr, nt > 1 only with cols == nr): tile t
// covers C[0:rows][t*nr : t*nr+cols] and reads A[0:rows][0:k] and
// B[t*nr : t*nr+cols][0:k] (B is Bᵀ, stored n×k). Each output becomes
// alpha*dot + (beta*C if flagLoadC) + (bias[j] if flagBias), then ReLU if
// flagReLU.
type kernFn func(a *float32, lda int, b *float32, ldb int, c *float32, ldc int, k, nt int, alpha, beta float32, bias *float32, flags int)

// native is a blocked driver over a family of micro-kernels.
type native struct {
	nm string
	mr int // rows per micro-tile
	kc int // k block: the A tile (mr×kc) stays in L1
	nc int // Bᵀ rows per block (multiple of nr): nc×kc stays in L2
	mc int // A rows per parallel task (multiple of mr)
	// kern[r-1][c-1] handles r rows × c columns.
	kern [][nr]kernFn
	// pk is the packed path's 6×16 micro-kernel (nil: no packed path);
	// Sgemm products with n at least pkMin take it.
	pk    packKernFn
	pkMin int
}

func (e *native) name() string { return e.nm }

// The blocked driver runs on Go goroutines: faults in its pool reach the
// caller (runShared).
func (e *native) faultsReachCaller() bool { return true }

// problem is C = alpha*A·Bᵀ + beta*C (+bias, activation) with A m×k and
// Bᵀ n×k, both row-major.
type problem struct {
	m, n, k int
	alpha   float32
	a       []float32
	lda     int
	b       []float32
	ldb     int
	beta    float32
	c       []float32
	ldc     int
	bias    []float32
	act     Activation
}

// parallelMinFlops is the product size (2·m·n·k) from which the work is
// shared with the worker pool; below it the calling goroutine does it all.
const parallelMinFlops = 4 << 20

func (e *native) sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if alpha == 0 || k == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	if e.usePacked(m, n, k) {
		e.runPacked(pproblem{m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, aKM: transA, b: b, ldb: ldb, bKN: !transB,
			beta: beta, c: c, ldc: ldc})
		return
	}
	var bufA, bufB *buffer
	if transA {
		bufA = getBuffer(m * k)
		transposeInto(k, m, a, lda, bufA.s, k)
		a, lda = bufA.s, k
	}
	if !transB {
		// Pad the stride when k spans several k blocks so that rows of the
		// block do not alias the same cache sets (k = 2048 would).
		ld := k
		if k > e.kc {
			ld = k + 16
		}
		bufB = getBuffer((n-1)*ld + k)
		transposeInto(k, n, b, ldb, bufB.s, ld)
		b, ldb = bufB.s, ld
	}
	e.run(problem{m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc})
	putBuffer(bufA)
	putBuffer(bufB)
}

func (e *native) linear(m, n, k int, a []float32, lda int, w []float32, ldw int, c []float32, ldc int, ep Epilogue) {
	if k == 0 {
		linearNoK(m, n, c, ldc, ep)
		return
	}
	e.run(problem{m: m, n: n, k: k, alpha: 1, a: a, lda: lda, b: w, ldb: ldw, c: c, ldc: ldc, bias: ep.Bias, act: ep.Act})
}

// run computes p, on the calling goroutine when it is small and with the
// worker pool otherwise.
func (e *native) run(p problem) {
	flops := 2 * float64(p.m) * float64(p.n) * float64(p.k)
	workers := runtime.GOMAXPROCS(0)
	if flops < parallelMinFlops || workers < 2 {
		// The same walk as the parallel tasks: an mc-row chunk of A stays
		// in L2 while the nc-row blocks of Bᵀ pass by.
		for i0 := 0; i0 < p.m; i0 += e.mc {
			for j0 := 0; j0 < p.n; j0 += e.nc {
				e.block(&p, i0, min(i0+e.mc, p.m), j0, min(j0+e.nc, p.n))
			}
		}
		return
	}
	mc, nc := e.mc, e.nc
	// Make enough tasks for every worker to have several.
	for ceilDiv(p.m, mc)*ceilDiv(p.n, nc) < 4*workers && nc > 4*nr {
		nc = (nc/2 + nr - 1) / nr * nr
	}
	for ceilDiv(p.m, mc)*ceilDiv(p.n, nc) < 4*workers && mc > 4*e.mr {
		mc = (mc/2 + e.mr - 1) / e.mr * e.mr
	}
	j := getJob()
	j.e, j.p, j.mc, j.nc = e, p, mc, nc
	j.tm, j.tn = ceilDiv(p.m, mc), ceilDiv(p.n, nc)
	j.next.Store(0)
	j.runShared(min(workers, j.tm*j.tn) - 1)
	j.p = problem{} // drop references to the caller's slices
	putJob(j)
}

// block computes the output rows [i0, i1) × columns [j0, j1) over all of k.
func (e *native) block(p *problem, i0, i1, j0, j1 int) {
	width := j1 - j0
	full, rem := width/nr, width%nr
	for kb := 0; kb < p.k; kb += e.kc {
		kl := min(e.kc, p.k-kb)
		beta, flags := p.beta, 0
		if kb > 0 {
			beta = 1
		}
		if beta != 0 {
			flags |= flagLoadC
		}
		var bias *float32
		if kb+kl == p.k {
			if p.bias != nil {
				flags |= flagBias
				bias = &p.bias[j0]
			}
			if p.act == ActReLU {
				flags |= flagReLU
			}
		}
		for i := i0; i < i1; i += e.mr {
			rows := min(e.mr, i1-i)
			ap := &p.a[i*p.lda+kb]
			ks := e.kern[rows-1]
			if full > 0 {
				ks[nr-1](ap, p.lda, &p.b[j0*p.ldb+kb], p.ldb, &p.c[i*p.ldc+j0], p.ldc, kl, full, p.alpha, beta, bias, flags)
			}
			if rem > 0 {
				jj := j0 + full*nr
				var bj *float32
				if bias != nil {
					bj = &p.bias[jj]
				}
				ks[rem-1](ap, p.lda, &p.b[jj*p.ldb+kb], p.ldb, &p.c[i*p.ldc+jj], p.ldc, kl, 1, p.alpha, beta, bj, flags)
			}
		}
	}
	if p.act > ActReLU {
		for i := i0; i < i1; i++ {
			row := p.c[i*p.ldc+j0 : i*p.ldc+j1]
			p.act.Apply(row, row)
		}
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// scaleC sets C = beta*C (C = 0 when beta is 0, NaNs included).
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	for i := range m {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		if beta != 1 {
			for j := range row {
				row[j] *= beta
			}
		}
	}
}

// linearNoK is Linear with k = 0: every output is act(bias).
func linearNoK(m, n int, c []float32, ldc int, ep Epilogue) {
	for i := range m {
		row := c[i*ldc : i*ldc+n]
		if ep.Bias != nil {
			copy(row, ep.Bias[:n])
		} else {
			clear(row)
		}
		ep.Act.Apply(row, row)
	}
}

// transposeInto writes the rows×cols matrix src (stride lds) into dst as a
// cols×rows matrix with stride ldd, in cache-sized tiles.
func transposeInto(rows, cols int, src []float32, lds int, dst []float32, ldd int) {
	const tile = 32
	for i0 := 0; i0 < rows; i0 += tile {
		i1 := min(i0+tile, rows)
		for j0 := 0; j0 < cols; j0 += tile {
			j1 := min(j0+tile, cols)
			for i := i0; i < i1; i++ {
				s := src[i*lds+j0 : i*lds+j1]
				for jj, v := range s {
					dst[(j0+jj)*ldd+i] = v
				}
			}
		}
	}
}

// buffer is a reusable scratch slice.
type buffer struct{ s []float32 }

var (
	bufMu   sync.Mutex
	bufFree []*buffer
)

// getBuffer returns a scratch buffer of n elements, reusing a pooled one
// when one is large enough. Buffers are kept for the life of the process, so
// a steady stream of same-shaped calls allocates nothing.
func getBuffer(n int) *buffer {
	bufMu.Lock()
	best := -1
	for i, b := range bufFree {
		if cap(b.s) >= n && (best < 0 || cap(b.s) < cap(bufFree[best].s)) {
			best = i
		}
	}
	if best < 0 && len(bufFree) > 0 {
		// Grow the largest one rather than keeping both.
		best = 0
		for i, b := range bufFree {
			if cap(b.s) > cap(bufFree[best].s) {
				best = i
			}
		}
	}
	var b *buffer
	if best >= 0 {
		b = bufFree[best]
		bufFree[best] = bufFree[len(bufFree)-1]
		bufFree = bufFree[:len(bufFree)-1]
	}
	bufMu.Unlock()
	if b == nil {
		b = new(buffer)
	}
	if cap(b.s) < n {
		b.s = make([]float32, n)
	}
	b.s = b.s[:n]
	return b
}

func putBuffer(b *buffer) {
	if b == nil {
		return
	}
	bufMu.Lock()
	bufFree = append(bufFree, b)
	bufMu.Unlock()
}

// job is one parallel computation shared by the caller and idle workers: a
// grid of blocks of the dot-product path, (step.e set) the A blocks of one
// step of the packed path, or (actSrc set) the chunks of an activation.
type job struct {
	e       *native
	p       problem
	mc, nc  int
	tm, tn  int          // task grid: row blocks × column blocks
	pp      pproblem     // the packed path's problem
	step    pkStep       // the packed path's current step
	total   int64        // tasks of the packed step or the activation
	next    atomic.Int64 // next task index
	pending atomic.Int32 // participants still inside work
	fin     chan struct{}
	// act over actSrc into actDst, in tasks of actChunk elements, when
	// actSrc is set (a shared activation: applyShared).
	act            Activation
	actDst, actSrc []float32
	// raised is the first panic a worker recovered from while working on
	// the job, raised again on the calling goroutine (runShared).
	raised atomic.Pointer[workerPanic]
	// callerCatchesFaults: the calling goroutine runs with
	// debug.SetPanicOnFault, so a worker's fault is carried to it like
	// any panic; otherwise a worker's fault is as fatal as the caller's
	// own would be.
	callerCatchesFaults bool
}

// workerPanic carries a value a worker recovered from.
type workerPanic struct{ v any }

var (
	jobMu   sync.Mutex
	jobFree []*job

	workOnce sync.Once
	workCh   chan *job // unbuffered: a send succeeds only to an idle worker
)

func getJob() *job {
	jobMu.Lock()
	defer jobMu.Unlock()
	if n := len(jobFree); n > 0 {
		j := jobFree[n-1]
		jobFree = jobFree[:n-1]
		return j
	}
	return &job{fin: make(chan struct{}, 1)}
}

func putJob(j *job) {
	jobMu.Lock()
	jobFree = append(jobFree, j)
	jobMu.Unlock()
}

// dispatch hands the job to up to n idle workers, starting the pool (GOMAXPROCS
// goroutines) on first use. Busy workers are not waited for.
func (j *job) dispatch(n int) {
	workOnce.Do(func() {
		workCh = make(chan *job)
		for range runtime.GOMAXPROCS(0) {
			go worker()
		}
	})
	for range n {
		j.pending.Add(1)
		select {
		case workCh <- j:
		default:
			j.pending.Add(-1)
			return
		}
	}
}

// worker serves jobs until the process ends. Memory faults are panics on
// its goroutine (debug.SetPanicOnFault), so that one touching memory the
// caller handed in (a shared memory region its client truncated) reaches
// the caller rather than killing the process: see runShared.
func worker() {
	debug.SetPanicOnFault(true)
	for j := range workCh {
		j.workRecovering()
		if j.pending.Add(-1) == 0 {
			j.fin <- struct{}{}
		}
	}
}

// workRecovering is work for a worker: a panic stops the job and is kept
// for the caller to raise.
func (j *job) workRecovering() {
	defer func() {
		if p := recover(); p != nil {
			if _, fault := p.(interface{ Addr() uintptr }); fault && !j.callerCatchesFaults {
				panic(p) // the caller would have died of it: so does the process
			}
			j.raised.CompareAndSwap(nil, &workerPanic{p})
			j.stop()
		}
	}()
	j.work()
}

// panicsOnFault reports whether the calling goroutine runs with
// debug.SetPanicOnFault.
func panicsOnFault() bool {
	old := debug.SetPanicOnFault(false)
	debug.SetPanicOnFault(old)
	return old
}

// stop makes every participant's next task fetch come back empty.
func (j *job) stop() { j.next.Store(math.MaxInt64 / 2) }

// runShared works on the job with up to n idle workers and returns when
// every participant has left it. A panic in any of them stops the job and
// is raised again on the calling goroutine once no worker touches the
// caller's memory any more. A memory fault (the workers turn faults into
// panics) is carried so only when the caller itself runs with
// debug.SetPanicOnFault: a caller that recovers faults on its own
// goroutine (package shm's Guard) recovers those of the pool too, and its
// memory is no longer in use when it does; for any other caller a fault
// in a worker ends the process, as one on the caller would. The job is
// then not reused.
func (j *job) runShared(n int) {
	j.raised.Store(nil)
	j.callerCatchesFaults = panicsOnFault()
	j.pending.Store(1)
	j.dispatch(n)
	defer j.join()
	j.work()
}

// join is runShared's deferred half: it waits for the workers and raises
// the first panic seen, the caller's own first.
func (j *job) join() {
	p := recover()
	if p != nil {
		j.stop()
	}
	if j.pending.Add(-1) != 0 {
		<-j.fin
	}
	if p == nil {
		if w := j.raised.Load(); w != nil {
			p = w.v
		}
	}
	if p != nil {
		panic(p)
	}
}

// work runs tasks until none is left.
func (j *job) work() {
	if j.actSrc != nil {
		for {
			t := j.next.Add(1) - 1
			if t >= j.total {
				return
			}
			lo := int(t) * actChunk
			hi := min(lo+actChunk, len(j.actSrc))
			j.act.apply(j.actDst[lo:hi], j.actSrc[lo:hi])
		}
	}
	if j.step.e != nil {
		for {
			t := j.next.Add(1) - 1
			if t >= j.total {
				return
			}
			j.step.run(int(t))
		}
	}
	total := int64(j.tm * j.tn)
	for {
		t := j.next.Add(1) - 1
		if t >= total {
			return
		}
		// Column blocks vary fastest so that concurrent tasks share A rows.
		ti, tj := int(t)/j.tn, int(t)%j.tn
		i0, j0 := ti*j.mc, tj*j.nc
		j.e.block(&j.p, i0, min(i0+j.mc, j.p.m), j0, min(j0+j.nc, j.p.n))
	}
}
