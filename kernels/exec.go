package kernels

import (
	"math"
	"runtime"
	"sync"

	"github.com/esper/kasmina-host/kernels/gemm"
)

// workspacePool is a bounded free list of workspaces. Unlike sync.Pool it
// never drops a workspace on its own (sync.Pool does at every GC, and at
// random under the race detector), so the steady state is deterministically
// allocation-free; it keeps at most as many workspaces as calls have run at
// once, capped at a few per CPU, until the kernel itself is dropped.
type workspacePool struct {
	mu   sync.Mutex
	free []*workspace
}

func (p *workspacePool) init() {
	p.free = make([]*workspace, 0, 2*runtime.GOMAXPROCS(0)+2)
}

func (p *workspacePool) get() *workspace {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		ws := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return ws
	}
	p.mu.Unlock()
	return new(workspace)
}

func (p *workspacePool) put(ws *workspace) {
	p.mu.Lock()
	if len(p.free) < cap(p.free) {
		p.free = append(p.free, ws)
	}
	p.mu.Unlock()
}

// workspace holds the intermediate buffers of one call. Workspaces come from
// a per-kernel free list and grow to the largest batch they have served, so a
// steady stream of same-shaped requests allocates nothing.
type workspace struct {
	a, b    []float32
	scratch []float32
	// tape and out serve the forward pass of a one-shot Backward.
	tape, out []float32
}

func (ws *workspace) ensure(actElems, scratch int) {
	if cap(ws.a) < actElems {
		ws.a = make([]float32, actElems)
		ws.b = make([]float32, actElems)
	}
	ws.a, ws.b = ws.a[:actElems], ws.b[:actElems]
	if cap(ws.scratch) < scratch {
		ws.scratch = make([]float32, scratch)
	}
	ws.scratch = ws.scratch[:scratch]
}

// forward runs the graph on input (batch samples) into out. When tape is
// not nil (batch × g.tapeFloats floats), it also records there what
// backward needs. The caller has checked the lengths; input is never
// written.
func (g *graph) forward(ws *workspace, input []float32, batch int, out, tape []float32) {
	if len(g.steps) == 0 {
		copy(out, input[:batch*g.inSize])
		return
	}
	ws.ensure(batch*g.maxAct, g.scratch)
	cur := input[:batch*g.inSize]
	curIsInput := true
	for i := range g.steps {
		st := &g.steps[i]
		n := batch * st.outSize
		var dst []float32
		switch {
		case i == len(g.steps)-1:
			dst = out[:n]
		case st.elementwise() && !curIsInput:
			dst = cur[:n]
		case sameBacking(cur, ws.a):
			dst = ws.b[:n]
		default:
			dst = ws.a[:n]
		}
		g.runStep(ws, st, cur, dst, batch, tape)
		cur, curIsInput = dst, false
	}
}

// elementwise reports whether the step may write into its own input.
func (st *step) elementwise() bool {
	return st.kind == opActivation || st.kind == opChannelAffine || st.kind == opLayerNorm
}

func sameBacking(x, y []float32) bool {
	return len(x) > 0 && cap(y) > 0 && &x[0] == &y[:1][0]
}

// runStep computes one step from src into dst (which may be src for
// elementwise steps), saving into tape (when not nil) what the step's
// backward needs: the activation is fused into a linear layer's GEMM only
// when its input need not be kept.
func (g *graph) runStep(ws *workspace, st *step, src, dst []float32, batch int, tape []float32) {
	src = src[:batch*st.inSize]
	y := dst[:batch*st.outSize]
	if in := saved(tape, st.tapeIn, st.inSize, batch); in != nil {
		copy(in, src)
	}
	saveAct := saved(tape, st.tapeAct, st.outSize, batch)
	keepPre := saveAct != nil && st.act.BackwardFromInput()
	act := st.act
	switch st.kind {
	case opLinear:
		fused := gemm.ActNone
		if !keepPre {
			fused, act = act, gemm.ActNone // in the GEMM's epilogue
		}
		linearForward(batch*st.rows, st.n, st.k, src, st.w, st.b, fused, y)
	case opConv2d:
		conv2dForward(ws, st, src, y, batch)
	case opChannelAffine:
		inner := st.inSize / st.channel
		for s := 0; s < batch; s++ {
			base := s * st.inSize
			for c := 0; c < st.channel; c++ {
				sc, sh := st.scale[c], st.shift[c]
				x := src[base+c*inner : base+(c+1)*inner]
				yc := y[base+c*inner : base+(c+1)*inner]
				for j, v := range x {
					yc[j] = v*sc + sh
				}
			}
		}
	case opLayerNorm:
		layerNorm(st, src, y, batch)
	case opAvgPool:
		adaptiveAvgPool(st.conv, src, y, batch)
	case opActivation:
		if keepPre {
			copy(saveAct, src) // before y, which may be src, is overwritten
			keepPre = false
		}
		act.Apply(y, src)
		act = gemm.ActNone
	}
	if keepPre {
		copy(saveAct, y)
	}
	if act != gemm.ActNone {
		act.Apply(y, y)
	}
	if saveAct != nil && !st.act.BackwardFromInput() {
		copy(saveAct, y)
	}
}

// conv2dForward computes a grouped, strided, padded, dilated convolution as
// im2col + GEMM per sample and group: out_g[cout/g, P] = w_g[cout/g, K] ·
// col[K, P] with K = cin/g·kh·kw and P = ho·wo.
func conv2dForward(ws *workspace, st *step, src, dst []float32, batch int) {
	c := st.conv
	cinG, coutG := c.cin/c.groups, c.cout/c.groups
	kk := cinG * c.kh * c.kw
	p := c.ho * c.wo
	for s := 0; s < batch; s++ {
		x := src[s*st.inSize : (s+1)*st.inSize]
		y := dst[s*st.outSize : (s+1)*st.outSize]
		for g := 0; g < c.groups; g++ {
			var col []float32
			if c.pointwise {
				col = x[g*cinG*p : (g+1)*cinG*p]
			} else {
				col = ws.scratch[:kk*p]
				im2col(c, x[g*cinG*c.h*c.w:(g+1)*cinG*c.h*c.w], cinG, col)
			}
			w := st.w[g*coutG*kk : (g+1)*coutG*kk]
			yg := y[g*coutG*p : (g+1)*coutG*p]
			matmulNN(coutG, p, kk, w, col, yg)
			if st.b != nil {
				for o := 0; o < coutG; o++ {
					bv := st.b[g*coutG+o]
					row := yg[o*p : (o+1)*p]
					for j := range row {
						row[j] += bv
					}
				}
			}
		}
	}
}

// im2col lays out the receptive fields of x ([cin, h, w]) as col[K, P].
func im2col(c convGeom, x []float32, cin int, col []float32) {
	p := c.ho * c.wo
	row := 0
	for ci := 0; ci < cin; ci++ {
		plane := x[ci*c.h*c.w : (ci+1)*c.h*c.w]
		for ki := 0; ki < c.kh; ki++ {
			for kj := 0; kj < c.kw; kj++ {
				dstRow := col[row*p : (row+1)*p]
				row++
				idx := 0
				for oy := 0; oy < c.ho; oy++ {
					iy := oy*c.sh - c.ph + ki*c.dh
					if iy < 0 || iy >= c.h {
						for ox := 0; ox < c.wo; ox++ {
							dstRow[idx] = 0
							idx++
						}
						continue
					}
					line := plane[iy*c.w : (iy+1)*c.w]
					for ox := 0; ox < c.wo; ox++ {
						ix := ox*c.sw - c.pw + kj*c.dw
						if ix < 0 || ix >= c.w {
							dstRow[idx] = 0
						} else {
							dstRow[idx] = line[ix]
						}
						idx++
					}
				}
			}
		}
	}
}

// layerNorm normalises each row of st.channel elements with statistics in
// float64 (biased variance, as PyTorch).
func layerNorm(st *step, src, dst []float32, batch int) {
	n := st.channel
	rows := batch * st.inSize / n
	for r := 0; r < rows; r++ {
		x := src[r*n : (r+1)*n]
		y := dst[r*n : (r+1)*n]
		var sum float64
		for _, v := range x {
			sum += float64(v)
		}
		mean := sum / float64(n)
		var ss float64
		for _, v := range x {
			d := float64(v) - mean
			ss += d * d
		}
		inv := 1 / math.Sqrt(ss/float64(n)+st.eps)
		if st.scale != nil {
			for j, v := range x {
				y[j] = float32((float64(v)-mean)*inv*float64(st.scale[j]) + float64(st.shift[j]))
			}
		} else {
			for j, v := range x {
				y[j] = float32((float64(v) - mean) * inv)
			}
		}
	}
}

// adaptiveAvgPool averages the bins PyTorch uses: rows
// [floor(i·H/oh), ceil((i+1)·H/oh)) and likewise for columns.
func adaptiveAvgPool(c convGeom, src, dst []float32, batch int) {
	for pl := 0; pl < batch*c.cin; pl++ {
		x := src[pl*c.h*c.w : (pl+1)*c.h*c.w]
		y := dst[pl*c.ho*c.wo : (pl+1)*c.ho*c.wo]
		for i := 0; i < c.ho; i++ {
			y0, y1 := i*c.h/c.ho, ((i+1)*c.h+c.ho-1)/c.ho
			for j := 0; j < c.wo; j++ {
				x0, x1 := j*c.w/c.wo, ((j+1)*c.w+c.wo-1)/c.wo
				var sum float64
				for yy := y0; yy < y1; yy++ {
					for _, v := range x[yy*c.w+x0 : yy*c.w+x1] {
						sum += float64(v)
					}
				}
				y[i*c.wo+j] = float32(sum / float64((y1-y0)*(x1-x0)))
			}
		}
	}
}
