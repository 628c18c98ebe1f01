package kernels

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/esper/kasmina-host/internal/tolerance"
)

// ref64 evaluates a module graph on one sample in float64: an
// implementation of every op written from PyTorch's definitions,
// independently of the executor, for the finite-difference check.
func ref64(m *Module, w map[string][]float64, prefix string, x []float64, shape []int) ([]float64, []int) {
	if m.Type == "sequential" {
		for i, l := range m.Layers {
			x, shape = ref64(l, w, fmt.Sprintf("%s%d.", prefix, i), x, shape)
		}
		return x, shape
	}
	p := func(name string) []float64 { return w[prefix+name] }
	elementwise := func(f func(float64) float64) ([]float64, []int) {
		y := make([]float64, len(x))
		for i, v := range x {
			y[i] = f(v)
		}
		return y, shape
	}
	switch m.Type {
	case "linear":
		in, out := m.InFeatures, m.OutFeatures
		rows := len(x) / in
		y := make([]float64, rows*out)
		wt, b := p("weight"), p("bias")
		for r := 0; r < rows; r++ {
			for o := 0; o < out; o++ {
				s := 0.0
				if b != nil {
					s = b[o]
				}
				for i := 0; i < in; i++ {
					s += x[r*in+i] * wt[o*in+i]
				}
				y[r*out+o] = s
			}
		}
		return y, append(append([]int(nil), shape[:len(shape)-1]...), out)
	case "conv2d":
		cin, h, wd := shape[0], shape[1], shape[2]
		kh, kw, sh, sw := m.KernelSize[0], m.KernelSize[1], m.Stride[0], m.Stride[1]
		ph, pw, dh, dw := m.Padding[0], m.Padding[1], m.Dilation[0], m.Dilation[1]
		ho, wo := (h+2*ph-dh*(kh-1)-1)/sh+1, (wd+2*pw-dw*(kw-1)-1)/sw+1
		cg, og := cin/m.Groups, m.OutChannels/m.Groups
		wt, b := p("weight"), p("bias")
		y := make([]float64, m.OutChannels*ho*wo)
		for o := 0; o < m.OutChannels; o++ {
			g := o / og
			for oy := 0; oy < ho; oy++ {
				for ox := 0; ox < wo; ox++ {
					s := 0.0
					if b != nil {
						s = b[o]
					}
					for c := 0; c < cg; c++ {
						for i := 0; i < kh; i++ {
							for j := 0; j < kw; j++ {
								iy, ix := oy*sh-ph+i*dh, ox*sw-pw+j*dw
								if iy >= 0 && iy < h && ix >= 0 && ix < wd {
									s += x[((g*cg+c)*h+iy)*wd+ix] * wt[((o*cg+c)*kh+i)*kw+j]
								}
							}
						}
					}
					y[(o*ho+oy)*wo+ox] = s
				}
			}
		}
		return y, []int{m.OutChannels, ho, wo}
	case "batchnorm1d", "batchnorm2d":
		inner := len(x) / shape[0]
		mean, vr, wt, b := p("running_mean"), p("running_var"), p("weight"), p("bias")
		y := make([]float64, len(x))
		for i, v := range x {
			c := i / inner
			z := (v - mean[c]) / math.Sqrt(vr[c]+m.Eps)
			if wt != nil {
				z = z*wt[c] + b[c]
			}
			y[i] = z
		}
		return y, shape
	case "layernorm":
		n := 1
		for _, d := range m.NormalizedShape {
			n *= d
		}
		wt, b := p("weight"), p("bias")
		y := make([]float64, len(x))
		for r := 0; r < len(x)/n; r++ {
			row := x[r*n : (r+1)*n]
			mean, vr := 0.0, 0.0
			for _, v := range row {
				mean += v / float64(n)
			}
			for _, v := range row {
				vr += (v - mean) * (v - mean) / float64(n)
			}
			for j, v := range row {
				z := (v - mean) / math.Sqrt(vr+m.Eps)
				if wt != nil {
					z = z*wt[j] + b[j]
				}
				y[r*n+j] = z
			}
		}
		return y, shape
	case "adaptive_avg_pool2d":
		c, h, wd := shape[0], shape[1], shape[2]
		oh, ow := m.OutputSize[0], m.OutputSize[1]
		if oh == 0 {
			oh = h
		}
		if ow == 0 {
			ow = wd
		}
		y := make([]float64, c*oh*ow)
		for ch := 0; ch < c; ch++ {
			for i := 0; i < oh; i++ {
				y0, y1 := int(math.Floor(float64(i*h)/float64(oh))), int(math.Ceil(float64((i+1)*h)/float64(oh)))
				for j := 0; j < ow; j++ {
					x0, x1 := int(math.Floor(float64(j*wd)/float64(ow))), int(math.Ceil(float64((j+1)*wd)/float64(ow)))
					s := 0.0
					for yy := y0; yy < y1; yy++ {
						for xx := x0; xx < x1; xx++ {
							s += x[(ch*h+yy)*wd+xx]
						}
					}
					y[(ch*oh+i)*ow+j] = s / float64((y1-y0)*(x1-x0))
				}
			}
		}
		return y, []int{c, oh, ow}
	case "relu":
		return elementwise(func(v float64) float64 { return math.Max(v, 0) })
	case "tanh":
		return elementwise(math.Tanh)
	case "sigmoid":
		return elementwise(func(v float64) float64 { return 1 / (1 + math.Exp(-v)) })
	case "gelu":
		if m.Approximate == "tanh" {
			return elementwise(func(v float64) float64 {
				return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
			})
		}
		return elementwise(func(v float64) float64 { return 0.5 * v * (1 + math.Erf(v/math.Sqrt2)) })
	case "flatten":
		s, e := m.StartDim, m.EndDim
		if s < 0 {
			s += len(shape) + 1
		}
		if e < 0 {
			e += len(shape) + 1
		}
		merged := 1
		for _, d := range shape[s-1 : e] {
			merged *= d
		}
		return x, append(append(append([]int(nil), shape[:s-1]...), merged), shape[e:]...)
	}
	return x, shape // identity, dropout
}

// fdCases are small graphs covering every op type, each option of conv2d,
// the norms with and without affine parameters, pooling that divides,
// overlaps and upsamples, every activation alone, fused into the op before
// it and following another, and the shape-only layers.
var fdCases = []struct {
	name    string
	layers  []string
	inShape []int
}{
	{"linear", []string{linearJSON(5, 4, true)}, []int{5}},
	{"linear without bias on a sequence", []string{linearJSON(5, 4, false)}, []int{3, 5}},
	{"conv2d 3x3 padded", []string{`{"type":"conv2d","in_channels":2,"out_channels":3,"kernel_size":3,"padding":1}`}, []int{2, 5, 6}},
	{"conv2d strided dilated grouped", []string{`{"type":"conv2d","in_channels":4,"out_channels":6,"kernel_size":[3,2],"stride":[2,1],"padding":[2,1],"dilation":[2,3],"groups":2,"bias":false}`}, []int{4, 7, 6}},
	{"conv2d pointwise grouped", []string{`{"type":"conv2d","in_channels":4,"out_channels":6,"kernel_size":1,"groups":2}`}, []int{4, 3, 4}},
	{"conv2d depthwise strided", []string{`{"type":"conv2d","in_channels":3,"out_channels":3,"kernel_size":3,"stride":2,"groups":3}`}, []int{3, 7, 5}},
	{"conv2d 1x1 strided", []string{`{"type":"conv2d","in_channels":2,"out_channels":3,"kernel_size":1,"stride":2}`}, []int{2, 5, 5}},
	{"batchnorm1d", []string{`{"type":"batchnorm1d","num_features":4}`}, []int{4}},
	{"batchnorm1d over a length, no affine", []string{`{"type":"batchnorm1d","num_features":3,"affine":false,"eps":0.1}`}, []int{3, 5}},
	{"batchnorm2d", []string{`{"type":"batchnorm2d","num_features":2}`}, []int{2, 3, 4}},
	{"layernorm", []string{`{"type":"layernorm","normalized_shape":4}`}, []int{3, 4}},
	{"layernorm over two dims, no affine", []string{`{"type":"layernorm","normalized_shape":[2,3],"elementwise_affine":false}`}, []int{2, 2, 3}},
	{"pool dividing", []string{`{"type":"adaptive_avg_pool2d","output_size":[2,3]}`}, []int{2, 4, 6}},
	{"pool overlapping", []string{`{"type":"adaptive_avg_pool2d","output_size":[3,4]}`}, []int{2, 5, 7}},
	{"pool keeping a size", []string{`{"type":"adaptive_avg_pool2d","output_size":[null,2]}`}, []int{1, 3, 5}},
	{"pool upsampling", []string{`{"type":"adaptive_avg_pool2d","output_size":[3,5]}`}, []int{2, 2, 3}},
	{"relu", []string{`{"type":"relu"}`}, []int{7}},
	{"tanh", []string{`{"type":"tanh"}`}, []int{7}},
	{"sigmoid", []string{`{"type":"sigmoid"}`}, []int{7}},
	{"gelu", []string{`{"type":"gelu"}`}, []int{7}},
	{"gelu tanh", []string{`{"type":"gelu","approximate":"tanh"}`}, []int{7}},
	{"linear + gelu fused", []string{linearJSON(5, 6, true), `{"type":"gelu"}`}, []int{5}},
	{"linear + relu fused", []string{linearJSON(5, 6, true), `{"type":"relu"}`}, []int{2, 5}},
	{"linear + sigmoid, + tanh", []string{linearJSON(5, 6, true), `{"type":"sigmoid"}`, linearJSON(6, 3, true), `{"type":"tanh"}`}, []int{5}},
	{"conv + gelu tanh fused", []string{`{"type":"conv2d","in_channels":2,"out_channels":2,"kernel_size":2}`, `{"type":"gelu","approximate":"tanh"}`}, []int{2, 4, 4}},
	{"batchnorm + tanh, pool + relu", []string{`{"type":"batchnorm2d","num_features":2}`, `{"type":"tanh"}`, `{"type":"adaptive_avg_pool2d","output_size":2}`, `{"type":"relu"}`}, []int{2, 3, 3}},
	{"layernorm + sigmoid", []string{`{"type":"layernorm","normalized_shape":5}`, `{"type":"sigmoid"}`}, []int{2, 5}},
	{"activation after activation", []string{`{"type":"relu"}`, `{"type":"gelu"}`, `{"type":"sigmoid"}`}, []int{6}},
	{"conv, dropout, flatten, linear", []string{`{"type":"conv2d","in_channels":2,"out_channels":2,"kernel_size":3}`, `{"type":"dropout","p":0.3}`, `{"type":"flatten"}`, linearJSON(12, 3, true)}, []int{2, 4, 5}},
	{"flatten from dim 2, identity, linear", []string{`{"type":"flatten","start_dim":2}`, `{"type":"identity"}`, linearJSON(6, 2, true), `{"type":"gelu"}`}, []int{3, 2, 3}},
	{"identity only", []string{`{"type":"identity"}`}, []int{4}},
}

// TestBackwardMatchesFiniteDifferences checks the vector-Jacobian product
// of every op type against central differences of ref64 in float64: for
// L(x) = Σ gradOut·f(x), ∂L/∂x_i ≈ (L(x + h·e_i) − L(x − h·e_i)) / 2h.
func TestBackwardMatchesFiniteDifferences(t *testing.T) {
	for ci, c := range fdCases {
		t.Run(c.name, func(t *testing.T) {
			mod := mustModule(t, seq(c.layers...))
			k, err := Load(testKernel(t, mod, c.inShape, int64(ci+1), nil), LoadOptions{InputShape: c.inShape})
			if err != nil {
				t.Fatal(err)
			}
			w := map[string][]float64{}
			for _, wt := range k.Weights() {
				v := make([]float64, len(wt.Values))
				for i, f := range wt.Values {
					v[i] = float64(f)
				}
				w[wt.Name] = v
			}
			const batch = 2
			x := randomInput(batch*k.InputSize(), int64(100+ci))
			gy := randomInput(batch*k.OutputSize(), int64(200+ci))
			got := make([]float32, len(x))
			if err := k.Backward(context.Background(), x, batch, gy, got); err != nil {
				t.Fatal(err)
			}
			var tape Tape
			viaTape := make([]float32, len(x))
			if err := k.Forward(context.Background(), x, batch, make([]float32, batch*k.OutputSize()), &tape); err != nil {
				t.Fatal(err)
			}
			if err := tape.Backward(context.Background(), gy, viaTape); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(viaTape[i]) {
					t.Fatalf("element %d: Backward %g, Forward+Tape.Backward %g", i, got[i], viaTape[i])
				}
			}
			loss := func(x64 []float64) float64 {
				var l float64
				for s := 0; s < batch; s++ {
					y, _ := ref64(mod, w, "", x64[s*k.InputSize():(s+1)*k.InputSize()], c.inShape)
					for j, v := range y {
						l += float64(gy[s*k.OutputSize()+j]) * v
					}
				}
				return l
			}
			x64 := make([]float64, len(x))
			for i, v := range x {
				x64[i] = float64(v)
			}
			if _, shape := ref64(mod, w, "", x64[:k.InputSize()], c.inShape); !slices.Equal(shape, k.OutputShape()) {
				t.Fatalf("ref64 output shape %v, kernel %v", shape, k.OutputShape())
			}
			want := make([]float64, len(x))
			for i := range x64 {
				h := 1e-6 * max(1, math.Abs(x64[i]))
				orig := x64[i]
				x64[i] = orig + h
				up := loss(x64)
				x64[i] = orig - h
				down := loss(x64)
				x64[i] = orig
				want[i] = (up - down) / (2 * h)
			}
			if rel := tolerance.RelErr(got, want); !(rel <= 2e-6) {
				t.Errorf("relative error %.3g against finite differences (want ≤ 2e-6)\n got %v\nwant %v", rel, got, want)
			} else {
				t.Logf("relative error %.3g", rel)
			}
		})
	}
}
