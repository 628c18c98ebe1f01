package kernels

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/esper/kasmina-host/kernels/gemm"
)

// ErrTape is wrapped by the errors of a backward pass from a Tape that
// holds no Forward of the kernel, or that another call is using.
var ErrTape = errors.New("tape")

// Tape is what Kernel.Forward records for a later backward pass: the few
// tensors the vector-Jacobian products read (an activation's output for
// ReLU, tanh and sigmoid, its input for the GELUs, a layer norm's input),
// copied, so the caller may reuse its input buffer. Linear, convolution,
// batch-norm and pooling layers need nothing from the forward, so a kernel
// made of them records an empty tape.
//
// The zero Tape is ready to use. It keeps its memory and grows to the
// largest batch recorded, so recording the same shapes again allocates
// nothing. A Tape is used by one call at a time; a second call while one
// runs fails with ErrTape rather than racing.
type Tape struct {
	k     *Kernel
	batch int
	buf   []float32
	busy  atomic.Bool
}

// Batch returns the batch size of the recorded Forward, 0 when none is.
func (t *Tape) Batch() int {
	if t.k == nil {
		return 0
	}
	return t.batch
}

// Bytes returns the memory the tape holds, for callers that bound how
// many tapes they keep.
func (t *Tape) Bytes() int64 { return 4 * int64(cap(t.buf)) }

// TapeBytes returns what a Forward of batch samples records on a tape, so
// that a caller can choose before running it between keeping the tape and
// keeping the input (InputSize() floats per sample) for a later one-shot
// Backward. It is 0 for kernels whose backward needs nothing from the
// forward.
func (k *Kernel) TapeBytes(batch int) int64 { return 4 * int64(batch) * int64(k.g.tapeFloats) }

func (t *Tape) acquire() error {
	if !t.busy.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: in use by another call", ErrTape)
	}
	return nil
}

func (t *Tape) release() { t.busy.Store(false) }

// Forward is Run that also records into tape what Backward needs (tape
// may be nil: then it is Run). Whatever the tape held before is replaced;
// if Forward fails, the tape holds nothing. Forward is safe for concurrent
// use with distinct tapes.
func (k *Kernel) Forward(ctx context.Context, input []float32, batch int, out []float32, tape *Tape) error {
	if tape == nil {
		return k.Run(ctx, input, batch, out)
	}
	if err := tape.acquire(); err != nil {
		return err
	}
	defer tape.release()
	tape.k = nil
	if err := k.checkRun(ctx, input, batch, out); err != nil {
		return err
	}
	ws := k.pool.get()
	k.g.forward(ws, input, batch, out, grow(&tape.buf, batch*k.g.tapeFloats))
	k.pool.put(ws)
	tape.k, tape.batch = k, batch
	return nil
}

// Backward computes the vector-Jacobian product of the Forward the tape
// recorded: gradIn = (∂out/∂input)ᵀ · gradOut, the gradient of a loss with
// respect to the input given gradOut, its gradient with respect to the
// output. gradOut holds Batch() × OutputSize() values, gradIn receives
// Batch() × InputSize(); gradOut is not modified and must not overlap
// gradIn. The kernel's weights are constants: no weight gradient is
// computed. The tape is not consumed; it may serve several backward
// passes.
func (t *Tape) Backward(ctx context.Context, gradOut, gradIn []float32) error {
	if err := t.acquire(); err != nil {
		return err
	}
	defer t.release()
	if t.k == nil {
		return fmt.Errorf("%w: no Forward recorded", ErrTape)
	}
	k := t.k
	if err := k.checkBackward(ctx, t.batch, gradOut, gradIn); err != nil {
		return err
	}
	ws := k.pool.get()
	k.g.backward(ws, t.buf, t.batch, gradOut, gradIn)
	k.pool.put(ws)
	return nil
}

// Backward computes, in one call, the vector-Jacobian product at input:
// gradIn = (∂out/∂input)ᵀ · gradOut for batch samples (see Tape.Backward).
// It runs the forward pass only when the kernel's backward needs something
// from it (an activation or a layer norm), into a pooled tape, so a steady
// stream of same-shaped calls allocates nothing. It is safe for concurrent
// use.
func (k *Kernel) Backward(ctx context.Context, input []float32, batch int, gradOut, gradIn []float32) error {
	if err := k.checkBackward(ctx, batch, gradOut, gradIn); err != nil {
		return err
	}
	if len(input) != batch*k.g.inSize {
		return fmt.Errorf("%w: input has %d values, batch %d × %v needs %d", ErrShape, len(input), batch, k.g.inShape, batch*k.g.inSize)
	}
	ws := k.pool.get()
	var tape []float32
	if k.g.tapeFloats > 0 {
		tape = grow(&ws.tape, batch*k.g.tapeFloats)
		k.g.forward(ws, input, batch, grow(&ws.out, batch*k.g.outSize), tape)
	}
	k.g.backward(ws, tape, batch, gradOut, gradIn)
	k.pool.put(ws)
	return nil
}

// checkBackward checks the context, the batch and the gradients' lengths.
func (k *Kernel) checkBackward(ctx context.Context, batch int, gradOut, gradIn []float32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if batch < 1 {
		return fmt.Errorf("%w: batch %d must be positive", ErrShape, batch)
	}
	if len(gradOut) != batch*k.g.outSize {
		return fmt.Errorf("%w: grad_output has %d values, batch %d × %v needs %d", ErrShape, len(gradOut), batch, k.g.outShape, batch*k.g.outSize)
	}
	if len(gradIn) != batch*k.g.inSize {
		return fmt.Errorf("%w: grad_input has room for %d values, batch %d × %v needs %d", ErrShape, len(gradIn), batch, k.g.inShape, batch*k.g.inSize)
	}
	return nil
}

// grow returns (*buf)[:n], reallocating when its capacity is short.
func grow(buf *[]float32, n int) []float32 {
	if cap(*buf) < n {
		*buf = make([]float32, n)
	}
	*buf = (*buf)[:n]
	return *buf
}

// backward runs the steps in reverse: for each, the activation's
// derivative (from the tape), then the op's transposed Jacobian. Gradients
// ping-pong between the workspace's buffers; elementwise steps work in
// place; the first step writes gradIn. gradOut is never written.
func (g *graph) backward(ws *workspace, tape []float32, batch int, gradOut, gradIn []float32) {
	if len(g.steps) == 0 {
		copy(gradIn, gradOut[:batch*g.inSize])
		return
	}
	ws.ensure(batch*max(g.maxAct, g.outSize), g.scratch)
	cur := gradOut[:batch*g.outSize]
	curIsCaller := true
	other := func(n int) []float32 {
		if sameBacking(cur, ws.a) {
			return ws.b[:n]
		}
		return ws.a[:n]
	}
	for i := len(g.steps) - 1; i >= 0; i-- {
		st := &g.steps[i]
		if st.act != gemm.ActNone {
			n := batch * st.outSize
			var dz []float32
			switch {
			case i == 0 && st.kind == opActivation:
				dz = gradIn[:n]
			case !curIsCaller:
				dz = cur
			default:
				dz = other(n)
			}
			st.act.Backward(dz, cur, saved(tape, st.tapeAct, st.outSize, batch))
			cur, curIsCaller = dz, false
			if st.kind == opActivation {
				continue
			}
		}
		n := batch * st.inSize
		var dx []float32
		switch {
		case i == 0:
			dx = gradIn[:n]
		case st.elementwise() && !curIsCaller:
			dx = cur[:n]
		default:
			dx = other(n)
		}
		g.stepBackward(ws, st, cur, dx, batch, tape)
		cur, curIsCaller = dx, false
	}
}

// stepBackward computes dx = Jᵀ·dy for the op of one step (its activation
// already handled). dx may be dy for elementwise ops.
func (g *graph) stepBackward(ws *workspace, st *step, dy, dx []float32, batch int, tape []float32) {
	switch st.kind {
	case opLinear:
		// y[r, n] = x[r, :]·w[n, :] + b  ⇒  dx[r, k] = dy[r, :]·w[:, k]
		gemm.Sgemm(false, false, batch*st.rows, st.k, st.n, 1, dy, st.n, st.w, st.k, 0, dx, st.k)
	case opConv2d:
		conv2dBackward(ws, st, dy, dx, batch)
	case opChannelAffine:
		inner := st.inSize / st.channel
		for s := 0; s < batch; s++ {
			base := s * st.inSize
			for c := 0; c < st.channel; c++ {
				sc := st.scale[c]
				d := dy[base+c*inner : base+(c+1)*inner]
				o := dx[base+c*inner : base+(c+1)*inner]
				for j, v := range d {
					o[j] = v * sc
				}
			}
		}
	case opLayerNorm:
		layerNormBackward(st, saved(tape, st.tapeIn, st.inSize, batch), dy, dx, batch)
	case opAvgPool:
		adaptiveAvgPoolBackward(st.conv, dy, dx, batch)
	}
}

// conv2dBackward computes the gradient of the input of a convolution per
// sample and group: dcol[K, P] = w_gᵀ · dy_g (one GEMM, K = cin/g·kh·kw,
// P = ho·wo), then col2im adds every receptive-field entry back onto the
// input position it was read from. Pointwise convolutions write w_gᵀ · dy_g
// straight into dx.
func conv2dBackward(ws *workspace, st *step, dy, dx []float32, batch int) {
	c := st.conv
	cinG, coutG := c.cin/c.groups, c.cout/c.groups
	kk := cinG * c.kh * c.kw
	p := c.ho * c.wo
	for s := 0; s < batch; s++ {
		d := dy[s*st.outSize : (s+1)*st.outSize]
		x := dx[s*st.inSize : (s+1)*st.inSize]
		for g := 0; g < c.groups; g++ {
			w := st.w[g*coutG*kk : (g+1)*coutG*kk]
			dg := d[g*coutG*p : (g+1)*coutG*p]
			if c.pointwise {
				gemm.Sgemm(true, false, kk, p, coutG, 1, w, kk, dg, p, 0, x[g*cinG*p:(g+1)*cinG*p], p)
				continue
			}
			col := ws.scratch[:kk*p]
			gemm.Sgemm(true, false, kk, p, coutG, 1, w, kk, dg, p, 0, col, p)
			col2im(c, col, cinG, x[g*cinG*c.h*c.w:(g+1)*cinG*c.h*c.w])
		}
	}
}

// col2im is im2col's transpose: it sets x ([cin, h, w]) to the sum of the
// col[K, P] entries read from each position.
func col2im(c convGeom, col []float32, cin int, x []float32) {
	clear(x)
	p := c.ho * c.wo
	row := 0
	for ci := 0; ci < cin; ci++ {
		plane := x[ci*c.h*c.w : (ci+1)*c.h*c.w]
		for ki := 0; ki < c.kh; ki++ {
			for kj := 0; kj < c.kw; kj++ {
				src := col[row*p : (row+1)*p]
				row++
				for oy := 0; oy < c.ho; oy++ {
					iy := oy*c.sh - c.ph + ki*c.dh
					if iy < 0 || iy >= c.h {
						continue
					}
					line := plane[iy*c.w : (iy+1)*c.w]
					vals := src[oy*c.wo : (oy+1)*c.wo]
					for ox, v := range vals {
						if ix := ox*c.sw - c.pw + kj*c.dw; ix >= 0 && ix < c.w {
							line[ix] += v
						}
					}
				}
			}
		}
	}
}

// layerNormBackward computes, per row of n elements, with the statistics
// recomputed from the saved input in float64 as the forward has them:
// x̂ = (x − μ)·σ⁻¹, g = dy·γ, dx = σ⁻¹·(g − mean(g) − x̂·mean(g·x̂)).
// dx may be dy.
func layerNormBackward(st *step, in, dy, dx []float32, batch int) {
	n := st.channel
	rows := batch * st.inSize / n
	fn := float64(n)
	for r := 0; r < rows; r++ {
		x := in[r*n : (r+1)*n]
		d := dy[r*n : (r+1)*n]
		o := dx[r*n : (r+1)*n]
		var sum float64
		for _, v := range x {
			sum += float64(v)
		}
		mean := sum / fn
		var ss float64
		for _, v := range x {
			e := float64(v) - mean
			ss += e * e
		}
		inv := 1 / math.Sqrt(ss/fn+st.eps)
		var sg, sgx float64
		for j, v := range d {
			g := float64(v)
			if st.scale != nil {
				g *= float64(st.scale[j])
			}
			sg += g
			sgx += g * (float64(x[j]) - mean) * inv
		}
		mg, mgx := sg/fn, sgx/fn
		for j, v := range d {
			g := float64(v)
			if st.scale != nil {
				g *= float64(st.scale[j])
			}
			xh := (float64(x[j]) - mean) * inv
			o[j] = float32(inv * (g - mg - xh*mgx))
		}
	}
}

// adaptiveAvgPoolBackward gives every input element the sum, over the bins
// that contain it, of the bin's gradient divided by its size, accumulated
// in float64 as the forward's averages are. Row yy lies in bins
// [⌊yy·oh/H⌋, ⌈(yy+1)·oh/H⌉ − 1] (bins overlap when oh does not divide H);
// likewise columns.
func adaptiveAvgPoolBackward(c convGeom, dy, dx []float32, batch int) {
	for pl := 0; pl < batch*c.cin; pl++ {
		d := dy[pl*c.ho*c.wo : (pl+1)*c.ho*c.wo]
		x := dx[pl*c.h*c.w : (pl+1)*c.h*c.w]
		for yy := 0; yy < c.h; yy++ {
			i0, i1 := yy*c.ho/c.h, ((yy+1)*c.ho+c.h-1)/c.h
			for xx := 0; xx < c.w; xx++ {
				j0, j1 := xx*c.wo/c.w, ((xx+1)*c.wo+c.w-1)/c.w
				var sum float64
				for i := i0; i < i1; i++ {
					rows := ((i+1)*c.h+c.ho-1)/c.ho - i*c.h/c.ho
					for j := j0; j < j1; j++ {
						cols := ((j+1)*c.w+c.wo-1)/c.wo - j*c.w/c.wo
						sum += float64(d[i*c.wo+j]) / float64(rows*cols)
					}
				}
				x[yy*c.w+xx] = float32(sum)
			}
		}
	}
}
