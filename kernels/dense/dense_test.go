package dense_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/dense"
	"github.com/esper/kasmina-host/kernels/examples"
	"gorgonia.org/tensor"
)

// linearTanh is Linear(5→3) + Tanh over [2, 5] samples, random weights.
func linearTanh(t *testing.T) *kernels.Kernel {
	t.Helper()
	m, err := kernels.ParseModule([]byte(`{"type":"sequential","layers":[{"type":"linear","in_features":5,"out_features":3},{"type":"tanh"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	rnd := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	var buf bytes.Buffer
	ts := []kernels.Tensor{kernels.F32Tensor("0.weight", []int{3, 5}, rnd(15)), kernels.F32Tensor("0.bias", []int{3}, rnd(3))}
	if err := kernels.WriteKernel(&buf, m, ts, nil); err != nil {
		t.Fatal(err)
	}
	k, err := kernels.Load(buf.Bytes(), kernels.LoadOptions{InputShape: []int{2, 5}})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRunMatchesKernelRun(t *testing.T) {
	k := linearTanh(t)
	x := make([]float32, 3*10)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)))
	}
	want := make([]float32, 3*6)
	if err := k.Run(context.Background(), x, 3, want); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		input func() *tensor.Dense
	}{
		{"row-major", func() *tensor.Dense { return tensor.New(tensor.WithShape(3, 2, 5), tensor.WithBacking(x)) }},
		{"transposed view", func() *tensor.Dense {
			// Store x transposed ([5, 2, 3] with the axes reversed) and
			// hand Run the view that reads it back as [3, 2, 5].
			tx := make([]float32, len(x))
			for s := range 3 {
				for i := range 2 {
					for j := range 5 {
						tx[(j*2+i)*3+s] = x[(s*2+i)*5+j]
					}
				}
			}
			d := tensor.New(tensor.WithShape(5, 2, 3), tensor.WithBacking(tx))
			if err := d.T(2, 1, 0); err != nil {
				t.Fatal(err)
			}
			return d
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := dense.Run(context.Background(), k, c.input())
			if err != nil {
				t.Fatal(err)
			}
			if s := got.Shape(); len(s) != 3 || s[0] != 3 || s[1] != 2 || s[2] != 3 {
				t.Fatalf("shape %v, want (3, 2, 3)", s)
			}
			for i, v := range got.Data().([]float32) {
				if v != want[i] {
					t.Fatalf("element %d: %v, Kernel.Run gives %v", i, v, want[i])
				}
			}
		})
	}
}

func TestRunRefusesTheWrongTensor(t *testing.T) {
	k := linearTanh(t)
	for _, c := range []struct {
		name  string
		input *tensor.Dense
		want  string
	}{
		{"float64", tensor.New(tensor.WithShape(1, 2, 5), tensor.WithBacking(make([]float64, 10))), "dtype float64"},
		{"no batch dimension", tensor.New(tensor.WithShape(2, 5), tensor.WithBacking(make([]float32, 10))), "input shape [2 5]"},
		{"wrong features", tensor.New(tensor.WithShape(1, 2, 4), tensor.WithBacking(make([]float32, 8))), "want [batch [2 5]]"},
		{"column-major", tensor.New(tensor.WithShape(1, 2, 5), tensor.WithBacking(make([]float32, 10)), tensor.AsFortran(nil)), "row-major"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := dense.Run(context.Background(), k, c.input)
			if !errors.Is(err, kernels.ErrShape) || !bytes.Contains([]byte(err.Error()), []byte(c.want)) {
				t.Fatalf("error %v, want ErrShape mentioning %q", err, c.want)
			}
		})
	}
}

func TestParametersShareTheKernelsWeights(t *testing.T) {
	k := linearTanh(t)
	ps := dense.Parameters(k)
	if len(ps) != 2 {
		t.Fatalf("%d parameters, want 2", len(ps))
	}
	for _, w := range k.Weights() {
		p, ok := ps[w.Name]
		if !ok {
			t.Fatalf("no parameter %q", w.Name)
		}
		if fmt.Sprint(p.Shape()) != fmt.Sprint(tensor.Shape(w.Shape)) {
			t.Errorf("%s: shape %v, want %v", w.Name, p.Shape(), w.Shape)
		}
		if d := p.Data().([]float32); &d[0] != &w.Values[0] {
			t.Errorf("%s: the tensor copies the weights instead of sharing them", w.Name)
		}
	}
}

// Example loads the embedded seed-sized example kernel (Linear 64→64 +
// ReLU), lists its parameters and runs it on a batch of two.
func Example() {
	data, err := examples.FS.ReadFile("seed-linear-64.safetensors")
	if err != nil {
		panic(err)
	}
	k, err := kernels.Load(data, kernels.LoadOptions{})
	if err != nil {
		panic(err)
	}
	params := dense.Parameters(k)
	for _, name := range []string{"0.weight", "0.bias"} {
		fmt.Println(name, params[name].Shape())
	}
	x := tensor.New(tensor.WithShape(2, 64), tensor.WithBacking(make([]float32, 2*64)))
	y, err := dense.Run(context.Background(), k, x)
	if err != nil {
		panic(err)
	}
	// A zero input gives relu(bias) in every row.
	bias := params["0.bias"].Data().([]float32)
	out := y.Data().([]float32)
	fmt.Println("output", y.Shape(), out[64+7] == max(bias[7], 0))
	// Output:
	// 0.weight (64, 64)
	// 0.bias (64)
	// output (2, 64) true
}
