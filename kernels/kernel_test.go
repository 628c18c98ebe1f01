package kernels

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestParseModuleRejectsBadGraphs(t *testing.T) {
	cases := []struct {
		name, js, want string
	}{
		{"root not sequential", `{"type":"relu"}`, "root is \"relu\""},
		{"unknown type", seq(`{"type":"lstm"}`), `root.layers[0]: unknown module type "lstm"`},
		{"missing type", seq(`{"in_features":3}`), "missing attribute type"},
		{"unknown attribute", seq(`{"type":"relu","inplace":true}`), "unknown attribute inplace"},
		{"missing in_features", seq(`{"type":"linear","out_features":3}`), "missing attribute in_features"},
		{"string where int", seq(`{"type":"linear","in_features":"3","out_features":3}`), "in_features: want an integer"},
		{"fractional int", seq(`{"type":"linear","in_features":3.5,"out_features":3}`), "in_features: want an integer"},
		{"zero features", seq(`{"type":"linear","in_features":0,"out_features":3}`), "must be positive"},
		{"groups not dividing", seq(`{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":[1,1],"groups":2}`), "groups 2 must be positive and divide"},
		{"kernel_size three values", seq(`{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":[1,1,1]}`), "kernel_size: want an integer or a list of two"},
		{"negative padding", seq(`{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,"padding":-1}`), "padding [-1 -1] must not be negative"},
		{"bad gelu", seq(`{"type":"gelu","approximate":"fast"}`), `approximate: want "none" or "tanh"`},
		{"dropout p > 1", seq(`{"type":"dropout","p":1.5}`), "p 1.5 must be in [0, 1]"},
		{"negative eps", seq(`{"type":"layernorm","normalized_shape":[4],"eps":-1}`), "eps -1 must not be negative"},
		{"empty normalized_shape", seq(`{"type":"layernorm","normalized_shape":[]}`), "normalized_shape: want an integer or a non-empty list"},
		{"layers not a list", `{"type":"sequential","layers":{}}`, "layers: want a list"},
		{"not an object", `[1]`, "want a JSON object"},
		{"too deep", strings.Repeat(`{"type":"sequential","layers":[`, 40) + strings.Repeat(`]}`, 40), "nested deeper than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseModule([]byte(c.js))
			if err == nil {
				t.Fatal("parsed a bad graph")
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want ErrMalformed mentioning %q", err, c.want)
			}
		})
	}
}

func TestModuleMarshalRoundTrips(t *testing.T) {
	js := seq(linearJSON(4, 8, true),
		`{"type":"conv2d","in_channels":2,"out_channels":4,"kernel_size":3,"stride":[1,2],"padding":1,"dilation":[2,1],"groups":2,"bias":false}`,
		`{"type":"sequential","layers":[{"type":"gelu","approximate":"tanh"},{"type":"dropout","p":0.1}]}`,
		`{"type":"batchnorm2d","num_features":4}`, `{"type":"layernorm","normalized_shape":5,"elementwise_affine":false}`,
		`{"type":"flatten","start_dim":2}`, `{"type":"adaptive_avg_pool2d","output_size":[null,3]}`)
	m := mustModule(t, js)
	b, err := m.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	m2 := mustModule(t, string(b))
	b2, _ := m2.MarshalJSON()
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip changed the module:\n%s\n%s", b, b2)
	}
	conv := m2.Layers[1]
	if conv.KernelSize != [2]int{3, 3} || conv.Stride != [2]int{1, 2} || conv.Dilation != [2]int{2, 1} || conv.Groups != 2 || conv.Bias {
		t.Errorf("conv attributes lost: %+v", conv)
	}
	if bn := m2.Layers[3]; bn.Eps != 1e-5 || !bn.Affine {
		t.Errorf("batchnorm defaults: eps %v affine %v", bn.Eps, bn.Affine)
	}
}

func TestLoadRefusesGraphsWhoseShapesDoNotChain(t *testing.T) {
	cases := []struct {
		name    string
		js      string
		inShape []int
		want    string
	}{
		{"linear in_features", seq(linearJSON(4, 8, true), linearJSON(7, 2, true)), []int{4}, "layer 1 (linear): in_features 7 does not match"},
		{"conv on vectors", seq(`{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":1}`), []int{3}, "needs [C, H, W]"},
		{"conv channels", seq(`{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":1}`), []int{2, 4, 4}, "in_channels 3 does not match"},
		{"kernel larger than input", seq(`{"type":"conv2d","in_channels":1,"out_channels":1,"kernel_size":5}`), []int{1, 3, 3}, "does not fit"},
		{"batchnorm features", seq(`{"type":"batchnorm1d","num_features":5}`), []int{4}, "num_features 5 does not match"},
		{"layernorm trailing", seq(`{"type":"layernorm","normalized_shape":[3,4]}`), []int{4, 3}, "does not match the trailing dimensions"},
		{"flatten batch", seq(`{"type":"flatten","start_dim":0}`), []int{4, 3}, "flattens the batch"},
		{"flatten out of range", seq(`{"type":"flatten","start_dim":5}`), []int{4, 3}, "out of range"},
		{"pool on vectors", seq(`{"type":"adaptive_avg_pool2d","output_size":1}`), []int{4}, "needs [C, H, W]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := mustModule(t, c.js)
			var buf bytes.Buffer
			if err := WriteKernel(&buf, m, nil, nil); err != nil {
				t.Fatal(err)
			}
			_, err := Load(buf.Bytes(), LoadOptions{InputShape: c.inShape})
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want ErrMalformed mentioning %q", err, c.want)
			}
		})
	}
}

func TestLoadChecksTensorsAgainstTheGraph(t *testing.T) {
	m := mustModule(t, seq(linearJSON(4, 3, true), `{"type":"batchnorm1d","num_features":3}`))
	w := F32Tensor("0.weight", []int{3, 4}, make([]float32, 12))
	b := F32Tensor("0.bias", []int{3}, make([]float32, 3))
	ones := []float32{1, 1, 1}
	bn := []Tensor{F32Tensor("1.running_mean", []int{3}, ones), F32Tensor("1.running_var", []int{3}, ones),
		F32Tensor("1.weight", []int{3}, ones), F32Tensor("1.bias", []int{3}, ones)}
	steps := Tensor{Name: "1.num_batches_tracked", DType: I64, Shape: []int{}, Data: make([]byte, 8)}
	cases := []struct {
		name    string
		tensors []Tensor
		want    string
	}{
		{"complete with ignored integer buffer", append([]Tensor{w, b, steps}, bn...), ""},
		{"missing bias", append([]Tensor{w}, bn...), "missing tensors: 0.bias [3]"},
		{"extra tensor", append([]Tensor{w, b, F32Tensor("5.weight", []int{1}, ones[:1])}, bn...), `tensor "5.weight" is not used`},
		{"wrong shape", append([]Tensor{F32Tensor("0.weight", []int{4, 3}, make([]float32, 12)), b}, bn...), `tensor "0.weight" has shape [4 3], the module expects [3 4]`},
		{"negative variance", []Tensor{w, b, bn[0], F32Tensor("1.running_var", []int{3}, []float32{1, -1, 1}), bn[2], bn[3]}, "a variance must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteKernel(&buf, m, c.tensors, nil); err != nil {
				t.Fatal(err)
			}
			k, err := Load(buf.Bytes(), LoadOptions{InputShape: []int{4}})
			if c.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if got := k.ParameterCount(); got != 12+3+3+3 {
					t.Errorf("ParameterCount = %d, want 21 (running stats excluded)", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestLoadVerifiesMetadata(t *testing.T) {
	m := mustModule(t, seq(linearJSON(8, 4, true), `{"type":"relu"}`))
	data := testKernel(t, m, []int{8}, 1, &KernelMetadata{KernelID: "k1", MemoryFootprintMB: 1})
	sum := sha256.Sum256(data)
	good := hex.EncodeToString(sum[:])
	bad := strings.Repeat("0", 64)
	upper := strings.ToUpper(good)
	cases := []struct {
		name    string
		md      *KernelMetadata
		wantErr error
	}{
		{"embedded only", nil, nil},
		{"matching checksum", &KernelMetadata{KernelID: "k1", InputShape: []int{8}, OutputShape: []int{4}, ParameterCount: 36, CompilationTarget: "safetensors", Checksum: &good}, nil},
		{"uppercase checksum", &KernelMetadata{InputShape: []int{8}, OutputShape: []int{4}, ParameterCount: 36, Checksum: &upper, CompilationTarget: "safetensors"}, nil},
		{"wrong checksum", &KernelMetadata{InputShape: []int{8}, OutputShape: []int{4}, ParameterCount: 36, Checksum: &bad, CompilationTarget: "safetensors"}, ErrChecksumMismatch},
		{"torchscript target", &KernelMetadata{CompilationTarget: "torchscript"}, ErrTargetNotExecutable},
		{"pickle target", &KernelMetadata{CompilationTarget: "pickle"}, ErrTargetNotExecutable},
		{"parameter count disagrees", &KernelMetadata{InputShape: []int{8}, OutputShape: []int{4}, ParameterCount: 32, CompilationTarget: "safetensors"}, ErrMetadataMismatch},
		{"output shape disagrees", &KernelMetadata{InputShape: []int{8}, OutputShape: []int{2, 2}, ParameterCount: 36, CompilationTarget: "safetensors"}, ErrMetadataMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := Load(data, LoadOptions{Metadata: c.md})
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("Load error %v, want %v", err, c.wantErr)
			}
			if c.wantErr == ErrTargetNotExecutable && !strings.Contains(err.Error(), c.md.CompilationTarget) {
				t.Errorf("error %q does not name the target", err)
			}
			if err != nil {
				return
			}
			if k.SHA256() != good || k.ID() != "k1" && c.md == nil {
				t.Errorf("SHA256 %s ID %s", k.SHA256(), k.ID())
			}
			mc := k.MemoryCheck()
			if !mc.Declared || mc.DifferenceMiB != mc.EstimatedMiB-mc.DeclaredMiB || mc.EstimatedMiB <= 0 {
				t.Errorf("memory check %+v", mc)
			}
		})
	}
}

// A digest the caller computed while reading the bytes is taken as it is
// (Load does not hash again): it is the kernel's SHA256, what its checksum
// is compared with, and must look like a SHA-256.
func TestLoadTakesTheCallersDigest(t *testing.T) {
	m := mustModule(t, seq(linearJSON(8, 4, true)))
	data := testKernel(t, m, []int{8}, 1, &KernelMetadata{KernelID: "k1", MemoryFootprintMB: 1})
	sum := sha256.Sum256(data)
	good := hex.EncodeToString(sum[:])
	streamed := strings.Repeat("ab", 32) // not data's: proves Load did not hash
	k, err := Load(data, LoadOptions{SHA256: streamed})
	if err != nil || k.SHA256() != streamed {
		t.Fatalf("Load with the caller's digest: SHA256 %q, %v; want %q", k.SHA256(), err, streamed)
	}
	md := &KernelMetadata{InputShape: []int{8}, OutputShape: []int{4}, ParameterCount: 36, Checksum: &good, CompilationTarget: "safetensors"}
	if _, err := Load(data, LoadOptions{Metadata: md, SHA256: streamed}); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("checksum against the caller's digest: %v, want ErrChecksumMismatch", err)
	}
	for _, bad := range []string{"abc", strings.ToUpper(good), good + "00"} {
		if _, err := Load(data, LoadOptions{SHA256: bad}); err == nil || !strings.Contains(err.Error(), "LoadOptions.SHA256") {
			t.Errorf("digest %q: %v, want it refused", bad, err)
		}
	}
}

func TestLoadRefusesEmbeddedTorchscriptButReadMetadataReadsIt(t *testing.T) {
	m := mustModule(t, seq(linearJSON(2, 2, false)))
	data := testKernel(t, m, []int{2}, 1, &KernelMetadata{KernelID: "ts", CompilationTarget: "torchscript"})
	if _, err := Load(data, LoadOptions{}); !errors.Is(err, ErrTargetNotExecutable) || !strings.Contains(err.Error(), `"torchscript"`) {
		t.Fatalf("Load error %v, want ErrTargetNotExecutable naming torchscript", err)
	}
	md, err := ReadMetadata(data)
	if err != nil || md == nil || md.KernelID != "ts" {
		t.Fatalf("ReadMetadata = %+v, %v", md, err)
	}
}

func TestLoadRefusesWrongFormatKey(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, nil, map[string]string{"format": "pt", "esper.module": seq()}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(buf.Bytes(), LoadOptions{InputShape: []int{1}}); err == nil || !strings.Contains(err.Error(), `"pt"`) {
		t.Fatalf("error %v, want one naming the format value", err)
	}
}

func TestCountsFollowPyTorch(t *testing.T) {
	js := seq(
		`{"type":"conv2d","in_channels":4,"out_channels":8,"kernel_size":[3,3],"padding":1,"groups":2}`, // 8*2*9+8 = 152 params
		`{"type":"batchnorm2d","num_features":8}`,                                                       // 16
		`{"type":"adaptive_avg_pool2d","output_size":[2,2]}`,
		`{"type":"flatten"}`,
		linearJSON(32, 10, true),                       // 330
		`{"type":"layernorm","normalized_shape":[10]}`, // 20
	)
	k, err := Load(testKernel(t, mustModule(t, js), []int{4, 6, 6}, 1, nil), LoadOptions{InputShape: []int{4, 6, 6}})
	if err != nil {
		t.Fatal(err)
	}
	if got := k.ParameterCount(); got != 152+16+330+20 {
		t.Errorf("ParameterCount = %d, want 518", got)
	}
	wantMACs := int64(8*6*6*(2*9)) + 32*10
	if got := k.MACsPerSample(); got != wantMACs {
		t.Errorf("MACsPerSample = %d, want %d", got, wantMACs)
	}
	if got := k.OutputShape(); !slices.Equal(got, []int{10}) {
		t.Errorf("OutputShape = %v", got)
	}
	if a, b := k.MemoryEstimateMiB(1), k.MemoryEstimateMiB(64); !(b > a) {
		t.Errorf("memory estimate does not grow with batch: %v, %v", a, b)
	}
}

// TestRunBytesFollowsTheGraph: RunBytes counts the output, the two
// activation buffers of the largest intermediate tensor and the conv
// scratch, and MaxBatchWithin inverts it.
func TestRunBytesFollowsTheGraph(t *testing.T) {
	js := seq(
		`{"type":"conv2d","in_channels":4,"out_channels":8,"kernel_size":[3,3],"padding":1,"groups":2}`,
		`{"type":"batchnorm2d","num_features":8}`,
		`{"type":"adaptive_avg_pool2d","output_size":[2,2]}`,
		`{"type":"flatten"}`,
		linearJSON(32, 10, true),
	)
	k, err := Load(testKernel(t, mustModule(t, js), []int{4, 6, 6}, 1, nil), LoadOptions{InputShape: []int{4, 6, 6}})
	if err != nil {
		t.Fatal(err)
	}
	if got := k.ActivationSize(); got != 8*6*6 {
		t.Errorf("ActivationSize = %d, want the conv output's %d", got, 8*6*6)
	}
	scratch := int64(4/2) * 3 * 3 * 6 * 6 // one group's im2col
	per := 4 * int64(10+2*8*6*6)
	for _, batch := range []int{1, 7, 4096} {
		if got, want := k.RunBytes(batch), int64(batch)*per+4*scratch; got != want {
			t.Errorf("RunBytes(%d) = %d, want %d", batch, got, want)
		}
	}
	if got := k.RunBytes(math.MaxInt); got != math.MaxInt64 {
		t.Errorf("RunBytes(MaxInt) = %d, want saturation at MaxInt64", got)
	}
	cases := []struct {
		limit int64
		want  int
	}{
		{0, math.MaxInt},
		{k.RunBytes(1) - 1, 0},
		{k.RunBytes(1), 1},
		{k.RunBytes(9), 9},
		{k.RunBytes(10) - 1, 9},
	}
	for _, c := range cases {
		if got := k.MaxBatchWithin(c.limit); got != c.want {
			t.Errorf("MaxBatchWithin(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}

// refConv2d is a direct float64 convolution, written independently of the
// im2col path.
func refConv2d(x []float32, cin, h, w int, wt, bias []float32, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups int) ([]float64, int, int) {
	ho := (h+2*ph-dh*(kh-1)-1)/sh + 1
	wo := (w+2*pw-dw*(kw-1)-1)/sw + 1
	out := make([]float64, cout*ho*wo)
	cg, og := cin/groups, cout/groups
	for o := 0; o < cout; o++ {
		g := o / og
		for y := 0; y < ho; y++ {
			for xx := 0; xx < wo; xx++ {
				s := 0.0
				if bias != nil {
					s = float64(bias[o])
				}
				for c := 0; c < cg; c++ {
					for i := 0; i < kh; i++ {
						for j := 0; j < kw; j++ {
							iy, ix := y*sh-ph+i*dh, xx*sw-pw+j*dw
							if iy < 0 || iy >= h || ix < 0 || ix >= w {
								continue
							}
							s += float64(x[(g*cg+c)*h*w+iy*w+ix]) * float64(wt[((o*cg+c)*kh+i)*kw+j])
						}
					}
				}
				out[(o*ho+y)*wo+xx] = s
			}
		}
	}
	return out, ho, wo
}

func TestConv2dMatchesDirectConvolution(t *testing.T) {
	cases := []struct{ cin, cout, h, w, kh, kw, sh, sw, ph, pw, dh, dw, groups int }{
		{3, 4, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1},
		{4, 6, 9, 8, 3, 2, 2, 1, 2, 0, 2, 3, 2},
		{6, 6, 5, 5, 3, 3, 1, 2, 1, 1, 1, 1, 6},
		{4, 8, 5, 4, 1, 1, 1, 1, 0, 0, 1, 1, 4},
		{2, 3, 4, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1},
	}
	for i, c := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			js := fmt.Sprintf(`{"type":"conv2d","in_channels":%d,"out_channels":%d,"kernel_size":[%d,%d],"stride":[%d,%d],"padding":[%d,%d],"dilation":[%d,%d],"groups":%d}`,
				c.cin, c.cout, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.groups)
			in := []int{c.cin, c.h, c.w}
			data := testKernel(t, mustModule(t, seq(js)), in, int64(i), nil)
			k, err := Load(data, LoadOptions{InputShape: in})
			if err != nil {
				t.Fatal(err)
			}
			wt, bias := weightValues(t, k, "0.weight"), weightValues(t, k, "0.bias")
			const batch = 2
			x := randomInput(batch*k.InputSize(), 7)
			out := make([]float32, batch*k.OutputSize())
			if err := k.Run(context.Background(), x, batch, out); err != nil {
				t.Fatal(err)
			}
			for s := 0; s < batch; s++ {
				want, ho, wo := refConv2d(x[s*k.InputSize():], c.cin, c.h, c.w, wt, bias, c.cout, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.groups)
				if !slices.Equal(k.OutputShape(), []int{c.cout, ho, wo}) {
					t.Fatalf("OutputShape %v, want %v", k.OutputShape(), []int{c.cout, ho, wo})
				}
				for j, w := range want {
					if got := float64(out[s*k.OutputSize()+j]); math.Abs(got-w) > 1e-5*(1+math.Abs(w)) {
						t.Fatalf("sample %d element %d = %v, want %v", s, j, got, w)
					}
				}
			}
		})
	}
}

func TestRunRejectsWrongSizes(t *testing.T) {
	k, err := Load(testKernel(t, mustModule(t, seq(linearJSON(4, 2, true))), []int{4}, 1, nil), LoadOptions{InputShape: []int{4}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		name       string
		in, out, b int
	}{{"short input", 7, 4, 2}, {"long output", 8, 5, 2}, {"zero batch", 0, 0, 0}} {
		if err := k.Run(ctx, make([]float32, c.in), c.b, make([]float32, c.out)); !errors.Is(err, ErrShape) {
			t.Errorf("%s: error %v, want ErrShape", c.name, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := k.Run(cctx, make([]float32, 4), 1, make([]float32, 2)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestRunDoesNotModifyInputAndHandlesActivationFirst(t *testing.T) {
	// relu first: the executor must not write into the caller's input.
	k, err := Load(testKernel(t, mustModule(t, seq(`{"type":"relu"}`, `{"type":"sigmoid"}`, `{"type":"identity"}`)), []int{3}, 1, nil), LoadOptions{InputShape: []int{3}})
	if err != nil {
		t.Fatal(err)
	}
	in := []float32{-1, 0, 2}
	out := make([]float32, 3)
	if err := k.Run(context.Background(), in, 1, out); err != nil {
		t.Fatal(err)
	}
	if in[0] != -1 {
		t.Errorf("input modified: %v", in)
	}
	want := []float32{0.5, 0.5, float32(1 / (1 + math.Exp(-2)))}
	for i := range want {
		if out[i] != want[i] {
			t.Errorf("out = %v, want %v", out, want)
			break
		}
	}
}

// weightValues returns the named weight of k.
func weightValues(t testing.TB, k *Kernel, name string) []float32 {
	t.Helper()
	for _, w := range k.Weights() {
		if w.Name == name {
			return w.Values
		}
	}
	t.Fatalf("kernel has no weight %q", name)
	return nil
}

func TestWeightsAreTheFileTensorsAsFloat32(t *testing.T) {
	m := mustModule(t, seq(linearJSON(3, 2, true), `{"type":"batchnorm1d","num_features":2}`))
	half := Tensor{Name: "1.running_var", DType: F16, Shape: []int{2}, Data: []byte{0x00, 0x3c, 0x00, 0x40}} // 1.0, 2.0
	tensors := []Tensor{
		F32Tensor("0.weight", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
		F32Tensor("0.bias", []int{2}, []float32{-1, 1}),
		F32Tensor("1.running_mean", []int{2}, []float32{0.5, -0.5}),
		half,
		F32Tensor("1.weight", []int{2}, []float32{1, 1}),
		F32Tensor("1.bias", []int{2}, []float32{0, 0}),
		{Name: "1.num_batches_tracked", DType: I64, Shape: []int{}, Data: make([]byte, 8)},
	}
	var buf bytes.Buffer
	if err := WriteKernel(&buf, m, tensors, nil); err != nil {
		t.Fatal(err)
	}
	k, err := Load(buf.Bytes(), LoadOptions{InputShape: []int{3}})
	if err != nil {
		t.Fatal(err)
	}
	got := k.Weights()
	want := []Weight{
		{"0.bias", []int{2}, []float32{-1, 1}},
		{"0.weight", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}},
		{"1.bias", []int{2}, []float32{0, 0}},
		{"1.running_mean", []int{2}, []float32{0.5, -0.5}},
		{"1.running_var", []int{2}, []float32{1, 2}},
		{"1.weight", []int{2}, []float32{1, 1}},
	}
	if len(got) != len(want) {
		t.Fatalf("Weights() has %d tensors, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].Name != want[i].Name || !slices.Equal(got[i].Shape, want[i].Shape) || !slices.Equal(got[i].Values, want[i].Values) {
			t.Errorf("weight %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	got[0].Shape[0] = 99 // shapes are copies
	if k.Weights()[0].Shape[0] != 2 {
		t.Error("Weights() shares its shapes with the kernel")
	}
}

// seedKernel is a linear in→out + ReLU kernel, the shape of a seed.
func seedKernel(t testing.TB, in, out int) *Kernel {
	t.Helper()
	k, err := Load(testKernel(t, mustModule(t, seq(linearJSON(in, out, true), `{"type":"relu"}`)), []int{in}, 1, nil), LoadOptions{InputShape: []int{in}})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// steadyStateCase is a kernel and a batch whose calls must not allocate
// once warm.
type steadyStateCase struct {
	name  string
	k     *Kernel
	batch int
}

// steadyStateCases are the allocation tests' kernels: seed-sized and wider
// linears, and a small convnet with every kind of op that keeps scratch
// (conv, batchnorm, GELU, pooling, flatten, linear, layernorm).
func steadyStateCases(t *testing.T) []steadyStateCase {
	t.Helper()
	conv := mustModule(t, seq(`{"type":"conv2d","in_channels":3,"out_channels":8,"kernel_size":3,"padding":1}`, `{"type":"batchnorm2d","num_features":8}`, `{"type":"gelu"}`, `{"type":"adaptive_avg_pool2d","output_size":2}`, `{"type":"flatten"}`, linearJSON(32, 4, true), `{"type":"layernorm","normalized_shape":4}`))
	convK, err := Load(testKernel(t, conv, []int{3, 8, 8}, 1, nil), LoadOptions{InputShape: []int{3, 8, 8}})
	if err != nil {
		t.Fatal(err)
	}
	return []steadyStateCase{{"seed 64->64 batch 1", seedKernel(t, 64, 64), 1}, {"linear batch 32", seedKernel(t, 128, 128), 32}, {"convnet batch 4", convK, 4}}
}

func TestRunAllocatesNothingInSteadyState(t *testing.T) {
	ctx := context.Background()
	for _, c := range steadyStateCases(t) {
		t.Run(c.name, func(t *testing.T) {
			in := randomInput(c.batch*c.k.InputSize(), 1)
			out := make([]float32, c.batch*c.k.OutputSize())
			allocs := testing.AllocsPerRun(200, func() {
				if err := c.k.Run(ctx, in, c.batch, out); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("Run allocates %v times per call in steady state", allocs)
			}
		})
	}
}

func TestRunIsSafeForConcurrentCallers(t *testing.T) {
	k := seedKernel(t, 32, 16)
	ctx := context.Background()
	batches := []int{1, 3, 8}
	want := map[int][]float32{}
	inputs := map[int][]float32{}
	for _, b := range batches {
		inputs[b] = randomInput(b*32, int64(b))
		want[b] = make([]float32, b*16)
		if err := k.Run(ctx, inputs[b], b, want[b]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				b := batches[(g+i)%len(batches)]
				out := make([]float32, b*16)
				if err := k.Run(ctx, inputs[b], b, out); err != nil {
					errs <- err
					return
				}
				for j := range out {
					if out[j] != want[b][j] {
						errs <- fmt.Errorf("goroutine %d batch %d: element %d = %v, want %v", g, b, j, out[j], want[b][j])
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestActivationLayersKeepNegativeZeroAndNaN runs activation layers on the
// values where the executor's and the GEMM epilogue's activations once
// disagreed: PyTorch's relu keeps -0 and NaN (torch.relu(tensor([-0.0]))
// is -0.0).
func TestActivationLayersKeepNegativeZeroAndNaN(t *testing.T) {
	negZero, nan := float32(math.Copysign(0, -1)), float32(math.NaN())
	in := []float32{negZero, nan, -1, 2}
	cases := []struct {
		name   string
		layers []string
		want   []float32
	}{
		{"relu", []string{`{"type":"relu"}`}, []float32{negZero, nan, 0, 2}},
		{"relu after relu", []string{`{"type":"relu"}`, `{"type":"relu"}`}, []float32{negZero, nan, 0, 2}},
		{"tanh", []string{`{"type":"tanh"}`}, []float32{negZero, nan, float32(math.Tanh(-1)), float32(math.Tanh(2))}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := Load(testKernel(t, mustModule(t, seq(c.layers...)), []int{4}, 1, nil), LoadOptions{InputShape: []int{4}})
			if err != nil {
				t.Fatal(err)
			}
			out := make([]float32, 4)
			if err := k.Run(context.Background(), in, 1, out); err != nil {
				t.Fatal(err)
			}
			for i := range out {
				if math.Float32bits(out[i]) != math.Float32bits(c.want[i]) && !(out[i] != out[i] && c.want[i] != c.want[i]) {
					t.Errorf("element %d: %v(%g) = %g (%#08x), want %g (%#08x)", i, c.name, in[i], out[i], math.Float32bits(out[i]), c.want[i], math.Float32bits(c.want[i]))
				}
			}
		})
	}
}
