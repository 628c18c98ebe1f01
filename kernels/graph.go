package kernels

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/esper/kasmina-host/kernels/gemm"
)

// maxActivationElems bounds the elements of one sample's activation at any
// point of the graph, so that a hostile input_shape cannot make every call
// allocate gigabytes.
const maxActivationElems = 1 << 28

// opKind is an executable step after no-op layers have been dropped.
type opKind int

const (
	opLinear opKind = iota
	opConv2d
	opChannelAffine // batchnorm1d/2d in eval(): per-channel scale and shift
	opLayerNorm
	opAvgPool
	opActivation
)

// step is one executable operation with its shapes (per sample, no batch).
type step struct {
	path    string // PyTorch parameter prefix, e.g. "0" or "1.2"
	kind    opKind
	in, out []int
	inSize  int // elements per sample
	outSize int
	act     gemm.Activation // applied after the op (the op itself for opActivation)

	// linear: y[r, n] = x[r, :]·w[n, :] + b[n], r over batch*rows rows
	w, b    []float32
	rows    int // rows per sample
	k, n    int
	conv    convGeom
	scale   []float32 // channel affine, layernorm gamma
	shift   []float32 // channel affine, layernorm beta
	channel int       // channel affine: channels; layernorm: normalized size
	eps     float64

	// What a Forward saves for Backward, as per-sample offsets into the
	// tape (-1 when nothing is saved): the op's input (layer norm) and the
	// activation's output (ReLU, tanh, sigmoid) or input (the GELUs).
	tapeIn, tapeAct int
}

// convGeom is the geometry of one conv2d step.
type convGeom struct {
	cin, h, w, cout, ho, wo int
	kh, kw, sh, sw          int
	ph, pw, dh, dw, groups  int
	pointwise               bool // 1x1, stride 1, no padding: im2col is the input itself
}

// colSize is the im2col scratch needed for one group of one sample.
func (g convGeom) colSize() int {
	if g.pointwise {
		return 0
	}
	return (g.cin / g.groups) * g.kh * g.kw * g.ho * g.wo
}

// paramSpec is one tensor the module graph expects in the file.
type paramSpec struct {
	name      string
	shape     []int
	learnable bool // counts towards parameter_count (running stats do not)
}

// graph is a module graph with shapes inferred and parameters bound.
type graph struct {
	steps        []step
	inShape      []int
	outShape     []int
	inSize       int
	outSize      int
	maxAct       int // largest per-sample activation between steps
	tapeFloats   int // floats a Forward saves per sample for Backward
	scratch      int // im2col floats needed per call (independent of batch)
	params       int // learnable parameter count, as PyTorch counts it
	macs         int64
	weightFloats int
	tensors      map[string]Weight // float32 copies of the file's float tensors
}

// buildGraph infers shapes through the module for a per-sample input shape,
// checks the tensors against what the module expects (names, shapes, no
// missing or extra float tensors; integer tensors are ignored), converts
// weights to float32 and produces the executable steps.
func buildGraph(root *Module, inShape []int, file *File) (*graph, error) {
	if len(inShape) == 0 {
		return nil, fmt.Errorf("%w: input shape is empty", ErrMalformed)
	}
	size, err := shapeSize(inShape)
	if err != nil {
		return nil, fmt.Errorf("%w: input shape %v: %v", ErrMalformed, inShape, err)
	}
	g := &graph{inShape: append([]int(nil), inShape...), inSize: size, tensors: map[string]Weight{}}
	flat, specs, outShape, err := inferGraph(root, inShape)
	if err != nil {
		return nil, err
	}
	g.outShape = outShape
	g.outSize, _ = shapeSize(outShape)
	for i := range flat {
		g.macs += flat[i].macs()
	}

	// Bind tensors.
	want := make(map[string]paramSpec, len(specs))
	for _, s := range specs {
		want[s.name] = s
	}
	for _, t := range file.Tensors {
		if !t.DType.IsFloat() {
			continue // num_batches_tracked and other integer buffers
		}
		s, ok := want[t.Name]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %s is not used by the module graph", ErrMalformed, quote(t.Name))
		}
		if !slices.Equal(t.Shape, s.shape) {
			return nil, fmt.Errorf("%w: tensor %s has shape %v, the module expects %v", ErrMalformed, quote(t.Name), t.Shape, s.shape)
		}
		vals, err := t.Float32s()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		g.tensors[t.Name] = Weight{Name: t.Name, Shape: append([]int(nil), t.Shape...), Values: vals}
		g.weightFloats += len(vals)
	}
	var missing []string
	for _, s := range specs {
		if _, ok := g.tensors[s.name]; !ok {
			missing = append(missing, fmt.Sprintf("%s %v", s.name, s.shape))
		}
		if s.learnable {
			n, _ := shapeSize(s.shape)
			g.params += n
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("%w: missing tensors: %s", ErrMalformed, strings.Join(missing, ", "))
	}

	// Bind weights into steps and fuse activations into the step before.
	for _, st := range flat {
		if err := g.bind(&st); err != nil {
			return nil, err
		}
		if st.kind == opActivation && len(g.steps) > 0 {
			prev := &g.steps[len(g.steps)-1]
			if prev.act == gemm.ActNone && prev.kind != opActivation {
				prev.act = st.act
				continue
			}
		}
		g.steps = append(g.steps, st)
	}
	for i, st := range g.steps {
		if i > 0 && st.inSize > g.maxAct {
			g.maxAct = st.inSize
		}
		if i < len(g.steps)-1 && st.outSize > g.maxAct {
			g.maxAct = st.outSize
		}
		if st.kind == opConv2d && st.conv.colSize() > g.scratch {
			g.scratch = st.conv.colSize()
		}
	}
	for i := range g.steps {
		st := &g.steps[i]
		st.tapeIn, st.tapeAct = -1, -1
		if st.kind == opLayerNorm {
			st.tapeIn = g.tapeFloats
			g.tapeFloats += st.inSize
		}
		if st.act != gemm.ActNone {
			st.tapeAct = g.tapeFloats
			g.tapeFloats += st.outSize
		}
	}
	return g, nil
}

// saved returns the part of a tape (holding batch samples) that a step's
// per-sample offset and size select, or nil for offset -1.
func saved(tape []float32, off, size, batch int) []float32 {
	if off < 0 || tape == nil {
		return nil
	}
	return tape[batch*off : batch*(off+size)]
}

// inferGraph walks the module in order, inferring per-sample shapes, and
// returns the executable steps (before fusion), every tensor the module
// expects, and the output shape.
func inferGraph(root *Module, inShape []int) ([]step, []paramSpec, []int, error) {
	shape := append([]int(nil), inShape...)
	var flat []step
	var specs []paramSpec
	var walk func(m *Module, prefix string) error
	walk = func(m *Module, prefix string) error {
		if m.Type == "sequential" {
			for i, l := range m.Layers {
				if err := walk(l, fmt.Sprintf("%s%d.", prefix, i)); err != nil {
					return err
				}
			}
			return nil
		}
		path := strings.TrimSuffix(prefix, ".")
		st, ps, newShape, err := inferStep(m, path, shape)
		if err != nil {
			return fmt.Errorf("%w: layer %s (%s): %v", ErrMalformed, path, m.Type, err)
		}
		shape = newShape
		specs = append(specs, ps...)
		if st != nil {
			flat = append(flat, *st)
		}
		return nil
	}
	if err := walk(root, ""); err != nil {
		return nil, nil, nil, err
	}
	return flat, specs, shape, nil
}

func (g *graph) data(name string) []float32 {
	return g.tensors[name].Values
}

// bind attaches the converted tensors to a step and precomputes batch-norm
// scale and shift in float64.
func (g *graph) bind(st *step) error {
	switch st.kind {
	case opLinear, opConv2d:
		st.w = g.data(st.path + ".weight")
		st.b = g.data(st.path + ".bias")
	case opChannelAffine:
		mean := g.data(st.path + ".running_mean")
		vr := g.data(st.path + ".running_var")
		w := g.data(st.path + ".weight")
		b := g.data(st.path + ".bias")
		st.scale = make([]float32, st.channel)
		st.shift = make([]float32, st.channel)
		for c := 0; c < st.channel; c++ {
			if vr[c] < 0 || math.IsNaN(float64(vr[c])) {
				return fmt.Errorf("%w: tensor %q: element %d is %v, a variance must not be negative", ErrMalformed, st.path+".running_var", c, vr[c])
			}
			s := 1 / math.Sqrt(float64(vr[c])+st.eps)
			sh := -float64(mean[c]) * s
			if w != nil {
				s *= float64(w[c])
				sh = sh*float64(w[c]) + float64(b[c])
			}
			st.scale[c] = float32(s)
			st.shift[c] = float32(sh)
		}
	case opLayerNorm:
		st.scale = g.data(st.path + ".weight")
		st.shift = g.data(st.path + ".bias")
	}
	return nil
}

// inferStep returns the step for a non-sequential module (nil for layers that
// do not touch the data: identity, dropout, flatten), the tensors it needs and
// the per-sample output shape.
func inferStep(m *Module, path string, in []int) (*step, []paramSpec, []int, error) {
	insize, _ := shapeSize(in)
	st := &step{path: path, in: append([]int(nil), in...), inSize: insize}
	var specs []paramSpec
	var out []int
	pfx := path + "."
	switch m.Type {
	case "linear":
		if in[len(in)-1] != m.InFeatures {
			return nil, nil, nil, fmt.Errorf("in_features %d does not match the incoming shape %v (last dimension %d)", m.InFeatures, in, in[len(in)-1])
		}
		out = append(append([]int(nil), in[:len(in)-1]...), m.OutFeatures)
		st.kind, st.k, st.n = opLinear, m.InFeatures, m.OutFeatures
		st.rows = insize / m.InFeatures
		specs = append(specs, paramSpec{pfx + "weight", []int{m.OutFeatures, m.InFeatures}, true})
		if m.Bias {
			specs = append(specs, paramSpec{pfx + "bias", []int{m.OutFeatures}, true})
		}
	case "conv2d":
		if len(in) != 3 {
			return nil, nil, nil, fmt.Errorf("needs [C, H, W] per sample, got %v", in)
		}
		if in[0] != m.InChannels {
			return nil, nil, nil, fmt.Errorf("in_channels %d does not match the incoming %d channels (shape %v)", m.InChannels, in[0], in)
		}
		c := convGeom{cin: in[0], h: in[1], w: in[2], cout: m.OutChannels,
			kh: m.KernelSize[0], kw: m.KernelSize[1], sh: m.Stride[0], sw: m.Stride[1],
			ph: m.Padding[0], pw: m.Padding[1], dh: m.Dilation[0], dw: m.Dilation[1], groups: m.Groups}
		c.ho = (c.h+2*c.ph-c.dh*(c.kh-1)-1)/c.sh + 1
		c.wo = (c.w+2*c.pw-c.dw*(c.kw-1)-1)/c.sw + 1
		if c.h+2*c.ph-c.dh*(c.kh-1)-1 < 0 || c.w+2*c.pw-c.dw*(c.kw-1)-1 < 0 || c.ho < 1 || c.wo < 1 {
			return nil, nil, nil, fmt.Errorf("kernel_size %v with dilation %v does not fit the padded input %dx%d", m.KernelSize, m.Dilation, c.h+2*c.ph, c.w+2*c.pw)
		}
		c.pointwise = c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && c.ph == 0 && c.pw == 0
		out = []int{c.cout, c.ho, c.wo}
		st.kind, st.conv = opConv2d, c
		specs = append(specs, paramSpec{pfx + "weight", []int{m.OutChannels, m.InChannels / m.Groups, c.kh, c.kw}, true})
		if m.Bias {
			specs = append(specs, paramSpec{pfx + "bias", []int{m.OutChannels}, true})
		}
	case "batchnorm1d", "batchnorm2d":
		if m.Type == "batchnorm1d" && len(in) != 1 && len(in) != 2 {
			return nil, nil, nil, fmt.Errorf("needs [C] or [C, L] per sample, got %v", in)
		}
		if m.Type == "batchnorm2d" && len(in) != 3 {
			return nil, nil, nil, fmt.Errorf("needs [C, H, W] per sample, got %v", in)
		}
		if in[0] != m.NumFeatures {
			return nil, nil, nil, fmt.Errorf("num_features %d does not match the incoming %d channels (shape %v)", m.NumFeatures, in[0], in)
		}
		out = in
		st.kind, st.channel, st.eps = opChannelAffine, m.NumFeatures, m.Eps
		c := []int{m.NumFeatures}
		specs = append(specs, paramSpec{pfx + "running_mean", c, false}, paramSpec{pfx + "running_var", c, false})
		if m.Affine {
			specs = append(specs, paramSpec{pfx + "weight", c, true}, paramSpec{pfx + "bias", c, true})
		}
	case "layernorm":
		ns := m.NormalizedShape
		if len(ns) > len(in) || !slices.Equal(in[len(in)-len(ns):], ns) {
			return nil, nil, nil, fmt.Errorf("normalized_shape %v does not match the trailing dimensions of %v", ns, in)
		}
		out = in
		st.kind, st.eps = opLayerNorm, m.Eps
		st.channel, _ = shapeSize(ns)
		if m.ElementwiseAffine {
			specs = append(specs, paramSpec{pfx + "weight", append([]int(nil), ns...), true}, paramSpec{pfx + "bias", append([]int(nil), ns...), true})
		}
	case "adaptive_avg_pool2d":
		if len(in) != 3 {
			return nil, nil, nil, fmt.Errorf("needs [C, H, W] per sample, got %v", in)
		}
		oh, ow := m.OutputSize[0], m.OutputSize[1]
		if oh == 0 {
			oh = in[1]
		}
		if ow == 0 {
			ow = in[2]
		}
		out = []int{in[0], oh, ow}
		st.kind = opAvgPool
		st.conv = convGeom{cin: in[0], h: in[1], w: in[2], cout: in[0], ho: oh, wo: ow}
	case "relu", "tanh", "sigmoid", "gelu":
		out = in
		st.kind = opActivation
		switch {
		case m.Type == "relu":
			st.act = gemm.ActReLU
		case m.Type == "tanh":
			st.act = gemm.ActTanh
		case m.Type == "sigmoid":
			st.act = gemm.ActSigmoid
		case m.Approximate == "tanh":
			st.act = gemm.ActGELUTanh
		default:
			st.act = gemm.ActGELU
		}
	case "identity", "dropout":
		return nil, nil, in, nil
	case "flatten":
		d := len(in) + 1 // with the batch as dimension 0
		s, e := m.StartDim, m.EndDim
		if s < 0 {
			s += d
		}
		if e < 0 {
			e += d
		}
		if s < 0 || s >= d || e < 0 || e >= d {
			return nil, nil, nil, fmt.Errorf("start_dim %d / end_dim %d out of range for %d dimensions (with batch)", m.StartDim, m.EndDim, d)
		}
		if s > e {
			return nil, nil, nil, fmt.Errorf("start_dim %d comes after end_dim %d", m.StartDim, m.EndDim)
		}
		if s == 0 && e > 0 {
			return nil, nil, nil, fmt.Errorf("start_dim %d flattens the batch dimension, which a kernel cannot do", m.StartDim)
		}
		if s == e {
			return nil, nil, in, nil
		}
		// per-sample indices s-1 .. e-1 merge
		merged := 1
		for _, v := range in[s-1 : e] {
			merged *= v
		}
		out = append(append(append([]int(nil), in[:s-1]...), merged), in[e:]...)
		return nil, nil, out, nil
	default:
		return nil, nil, nil, fmt.Errorf("unknown module type %q", m.Type)
	}
	outsize, err := shapeSize(out)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("output shape %v: %v", out, err)
	}
	st.out, st.outSize = out, outsize
	return st, specs, out, nil
}

// macs returns the multiply-adds one sample costs in this step (linear and
// convolution only; elementwise work is not counted).
func (st *step) macs() int64 {
	switch st.kind {
	case opLinear:
		return int64(st.rows) * int64(st.k) * int64(st.n)
	case opConv2d:
		c := st.conv
		return int64(c.cout) * int64(c.ho*c.wo) * int64(c.cin/c.groups*c.kh*c.kw)
	}
	return 0
}

func shapeSize(shape []int) (int, error) {
	n := 1
	for i, d := range shape {
		if d < 1 {
			return 0, fmt.Errorf("dimension %d is %d, must be positive", i, d)
		}
		if n > maxActivationElems/d {
			return 0, fmt.Errorf("more than %d elements per sample", maxActivationElems)
		}
		n *= d
	}
	return n, nil
}
