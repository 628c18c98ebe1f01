package gemm

import "runtime"

// The packed path serves large products, where the dot-product kernels
// run out of load bandwidth and cache: operands are copied into panels laid
// out in the order an outer-product micro-kernel reads them (the BLIS
// scheme), a kc×nc block of B shared by every worker in L2/L3 and an mc×kc
// block of A per worker in L2, and a 6×16 tile of C is computed from them
// with twelve vector accumulators. Packing reads each operand in its own
// layout, so no transposed copy is made first.
const (
	pkMR = 6    // rows of a micro-tile (A panel height)
	pkNR = 16   // columns of a micro-tile (B panel width)
	pkKC = 384  // k block: a B panel (384×16 floats, 24 KiB) stays in L1
	pkMC = 120  // A block rows (multiple of pkMR): 120×384 floats in L2
	pkNC = 3072 // B block columns (multiple of pkNR): 384×3072 floats in L3
)

// pkKC and pkMC were chosen by timing a 2048³ product on one Zen 3 core:
// kc 256/384/512 × mc 72/120/240 gave 54-70 GFLOP/s, best at 384 × 120.

// packKernFn computes C[0:6][0:16] (stride ldc) = alpha·Ap·Bp (+ beta·C if
// flagLoadC); Ap is k steps of 6 floats, Bp k steps of 16.
type packKernFn func(a *float32, b *float32, c *float32, ldc int, k int, alpha float32, beta float32, flags int)

// pproblem is a product for the packed path: C = alpha·op(A)·op(B) + beta·C,
// with op(A) m×k and op(B) k×n. (Linear layers stay on the dot-product
// path: their weights are already laid out along k, and packing them on
// every call cost more than the outer-product kernel gained.)
type pproblem struct {
	m, n, k int
	alpha   float32
	a       []float32
	lda     int
	aKM     bool // a holds op(A) transposed: k×m
	b       []float32
	ldb     int
	bKN     bool // b holds op(B) as is, k×n (otherwise n×k)
	beta    float32
	c       []float32
	ldc     int
}

// packedMinN is the smallest n the packed path takes. Measured on a
// 2-core Zen 3 against the dot-product path (which transposes B first):
// from n = 512 the packed path wins for every m and k tried (m from 1,
// k from 8: 1.1x at 512³, 2-5x on convolution shapes with few output
// channels and many pixels, 1.3-1.5x on a 2048³ matmul); below it the two
// are level or the dot path wins (0.5-1.1x at 96-256 in every dimension).
const packedMinN = 512

// usePacked reports whether an m×n×k product goes through the packed path.
func (e *native) usePacked(m, n, k int) bool {
	return e.pk != nil && n >= e.pkMin
}

// packA copies rows [i0, i0+mc) × k range [p0, p0+kc) of op(A) into dst as
// ceil(mc/6) panels of kc steps of 6 floats, zero-padded past mc.
func (p *pproblem) packA(dst []float32, i0, mc, p0, kc int) {
	for r := 0; r < mc; r += pkMR {
		base := (i0+r)*p.lda + p0 // row-major A: lane (row) ii at base + ii·lda
		if p.aKM {
			base = p0*p.lda + i0 + r // k×m: step kk at base + kk·lda
		}
		packPanel(dst[r*kc:(r+pkMR)*kc], pkMR, kc, p.a, p.lda, base, min(pkMR, mc-r), p.aKM)
	}
}

// packB copies k range [p0, p0+kc) × columns [j0, j0+nc) of op(B) into dst
// as ceil(nc/16) panels of kc steps of 16 floats, zero-padded past nc.
func (p *pproblem) packB(dst []float32, p0, kc, j0, nc int) {
	for q := 0; q < nc; q += pkNR {
		base := (j0+q)*p.ldb + p0 // Bᵀ (n×k): lane (column) jj at base + jj·ldb
		if p.bKN {
			base = p0*p.ldb + j0 + q // k×n: step kk at base + kk·ldb
		}
		packPanel(dst[q*kc:(q+pkNR)*kc], pkNR, kc, p.b, p.ldb, base, min(pkNR, nc-q), p.bKN)
	}
}

// packPanel fills panel, kc steps of w floats, with n ≤ w lanes of src and
// zeros after them. stepMajor: step kk's lanes are contiguous at
// src[base+kk·ld:]; otherwise lane l's steps are contiguous at
// src[base+l·ld:], and are gathered 16 steps at a time so that each lane is
// read a cache line at a time.
func packPanel(panel []float32, w, kc int, src []float32, ld, base, n int, stepMajor bool) {
	if stepMajor {
		for kk := range kc {
			d := panel[kk*w : kk*w+w]
			copy(d, src[base+kk*ld:][:n])
			clear(d[n:])
		}
		return
	}
	for kb := 0; kb < kc; kb += 16 {
		kl := min(16, kc-kb)
		for l := range n {
			for t, v := range src[base+l*ld+kb:][:kl] {
				panel[(kb+t)*w+l] = v
			}
		}
		if n < w {
			for t := range kl {
				clear(panel[(kb+t)*w+n : (kb+t+1)*w])
			}
		}
	}
}

// pkStep is one k block of one B block: the packed B shared by the tasks,
// which are A blocks of mc rows × chunks of qc columns.
type pkStep struct {
	e       *native
	p       *pproblem
	bp      []float32
	j0, nc  int
	p0, kc  int
	mc      int  // rows per task
	qc      int  // columns per task (multiple of pkNR)
	tn      int  // column chunks per step
	packing bool // the tasks pack B's column chunks (a first phase)
	first   bool // the first k block: beta applies
}

// run runs task number t of the step: packing column chunk t when
// packing, else computing row block t/tn × column chunk t%tn.
func (s *pkStep) run(t int) {
	if s.packing {
		q0 := t * s.qc
		s.p.packB(s.bp[q0*s.kc:], s.p0, s.kc, s.j0+q0, min(s.qc, s.nc-q0))
		return
	}
	i0, q0 := t/s.tn*s.mc, t%s.tn*s.qc
	s.task(i0, min(s.mc, s.p.m-i0), q0, q0+s.qc)
}

// task computes rows [i0, i0+mc) × columns [q0, q1) of the step (q0 and
// q1 multiples of pkNR, q1 capped at nc): it packs its A block and runs the
// micro-kernel over every tile, each B panel staying in L1 while the A
// panels pass.
func (s *pkStep) task(i0, mc, q0, q1 int) {
	p := s.p
	// The A block, then the scratch tile for edge tiles (a local array
	// would escape through the kernel's function value).
	panels := ceilDiv(mc, pkMR) * pkMR * s.kc
	bufA := getBuffer(panels + pkMR*pkNR)
	p.packA(bufA.s, i0, mc, s.p0, s.kc)
	tile := bufA.s[panels:]
	beta, flags := p.beta, 0
	if !s.first {
		beta = 1
	}
	if beta != 0 {
		flags |= flagLoadC
	}
	for q := q0; q < min(q1, s.nc); q += pkNR {
		bp := &s.bp[q*s.kc]
		cols := min(pkNR, s.nc-q)
		j := s.j0 + q
		for r := 0; r < mc; r += pkMR {
			ap := &bufA.s[r*s.kc]
			rows := min(pkMR, mc-r)
			i := i0 + r
			if rows == pkMR && cols == pkNR {
				s.e.pk(ap, bp, &p.c[i*p.ldc+j], p.ldc, s.kc, p.alpha, beta, flags)
				continue
			}
			// An edge tile: computed whole into a scratch tile, then
			// merged into the part of C that exists.
			s.e.pk(ap, bp, &tile[0], pkNR, s.kc, p.alpha, 0, 0)
			for ii := range rows {
				crow := p.c[(i+ii)*p.ldc+j : (i+ii)*p.ldc+j+cols]
				for jj := range crow {
					v := tile[ii*pkNR+jj]
					if flags&flagLoadC != 0 {
						v += beta * crow[jj]
					}
					crow[jj] = v
				}
			}
		}
	}
	putBuffer(bufA)
}

// share runs tasks 0..tasks-1 of j.step on the calling goroutine and the
// idle workers, returning when all are done.
func (j *job) share(tasks, workers int) {
	j.total = int64(tasks)
	j.next.Store(0)
	j.runShared(min(workers, tasks) - 1)
}

// runPacked computes p through packed panels, sharing each step's A blocks
// with the worker pool when the product is large enough. The problem and
// the step live in a pooled job, so a call allocates nothing.
func (e *native) runPacked(pp pproblem) {
	j := getJob()
	j.pp = pp
	p := &j.pp
	bufB := getBuffer(min(pkKC, p.k) * (ceilDiv(p.n, ceilDiv(p.n, pkNC)) + pkNR))
	workers := runtime.GOMAXPROCS(0)
	// Blocks of equal size rather than full ones and a sliver (m = 128
	// would otherwise be blocks of 120 and 8 rows).
	ncb := ceilDiv(ceilDiv(p.n, ceilDiv(p.n, pkNC)), pkNR) * pkNR
	tm := ceilDiv(p.m, pkMC)
	mc := ceilDiv(ceilDiv(p.m, tm), pkMR) * pkMR
	tm = ceilDiv(p.m, mc)
	for j0 := 0; j0 < p.n; j0 += ncb {
		nc := min(ncb, p.n-j0)
		// Tasks: A blocks × chunks of B panels, enough of them for every
		// worker to have several.
		tn := min(ceilDiv(nc, pkNR), max(1, ceilDiv(4*workers, tm)))
		qc := ceilDiv(ceilDiv(nc, pkNR), tn) * pkNR
		tn = ceilDiv(nc, qc)
		for p0 := 0; p0 < p.k; p0 += pkKC {
			kc := min(pkKC, p.k-p0)
			j.step = pkStep{e: e, p: p, bp: bufB.s, j0: j0, nc: nc, p0: p0, kc: kc, mc: mc, qc: qc, tn: tn,
				first: p0 == 0}
			if workers < 2 || tm*tn < 2 || 2*float64(p.m)*float64(nc)*float64(kc) < parallelMinFlops {
				// Alone: one column chunk, so each A block is packed once.
				p.packB(bufB.s, p0, kc, j0, nc)
				j.step.qc, j.step.tn = ceilDiv(nc, pkNR)*pkNR, 1
				for t := range tm {
					j.step.run(t)
				}
				continue
			}
			// Two phases, each shared with the pool: pack B's chunks,
			// then compute (every task reads every chunk of its row).
			j.step.packing = true
			j.share(tn, workers)
			j.step.packing = false
			j.share(tm*tn, workers)
		}
	}
	putBuffer(bufB)
	j.step, j.pp = pkStep{}, pproblem{} // drop references to the caller's slices
	putJob(j)
}
