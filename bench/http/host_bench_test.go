package httpbench

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// seedKernel writes a Linear(64→64)+ReLU kernel (the seed-sized kernel of
// the README's HTTP rows).
func seedKernel(b *testing.B) []byte {
	b.Helper()
	const n = 64
	rng := rand.New(rand.NewPCG(1, 2))
	w := make([]float32, n*n)
	for i := range w {
		w[i] = rng.Float32()*0.2 - 0.1
	}
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: n, OutFeatures: n, Bias: true},
		{Type: "relu"},
	}}
	md := contracts.NewKernelMetadata("k", "bp-k", "k")
	md.InputShape, md.OutputShape, md.ParameterCount = []int{n}, []int{n}, n*n+n
	md.MemoryFootprintMB = 1
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{n, n}, w), kernels.F32Tensor("0.bias", []int{n}, make([]float32, n)),
	}, &md); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// discardWriter is an http.ResponseWriter that keeps nothing but the
// status, reused across iterations.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// rewindBody is a request body rewound before each iteration.
type rewindBody struct{ bytes.Reader }

func (*rewindBody) Close() error { return nil }

// serve runs one request through h, reusing r, body and w.
func serve(b *testing.B, h http.Handler, r *http.Request, body *rewindBody, raw []byte, w *discardWriter) {
	body.Reset(raw)
	clear(w.h)
	w.code = 0
	h.ServeHTTP(w, r)
	if w.code != http.StatusOK && w.code != 0 {
		b.Fatalf("status %d", w.code)
	}
}

// BenchmarkHostAdapter measures what the HTTP layer adds to an inference,
// side by side on the same 1×64 input to a Linear(64→64)+ReLU kernel on a
// real runtime.Host:
//
//	Host.Infer        the runtime alone (lookup, checks, admission, run,
//	                  health window, metrics; the output allocated)
//	adapter           oip.HostBackend as the handler calls it: Model (the
//	                  lookup, once), then Infer with that model's handle
//	handler/host      the real handler (oip.NewHandler) over the real host:
//	                  routing, guards, body, JSON decoding and encoding,
//	                  metrics, no network
//	handler/fake      the same handler over oiptest's fake backend whose
//	                  model returns its input: the HTTP layer's own cost
//
// adapter − Host.Infer is the adapter's cost per request (target: under
// 1 µs and at most 2 allocations).
func BenchmarkHostAdapter(b *testing.B) {
	ctx := context.Background()
	inv, err := device.Open(ctx, device.Options{Simulate: "dgxa100"})
	if err != nil {
		b.Fatal(err)
	}
	defer inv.Close()
	host, err := runtime.New(runtime.Config{}, runtime.Deps{Inventory: inv})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := host.Load(ctx, runtime.LoadRequest{Data: seedKernel(b)}); err != nil {
		b.Fatal(err)
	}
	be := oip.HostBackend(host)
	x := make([]float32, 64)
	for i := range x {
		x[i] = float32(i)/64 - 0.5
	}
	shape := []int{1, 64}
	b.Run("Host.Infer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := host.Infer(ctx, "k", runtime.Request{Input: x, Shape: shape}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("adapter", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m, ok := be.Model("k")
			if !ok {
				b.Fatal("no model")
			}
			if _, _, err := be.Infer(ctx, m, oip.KernelRequest{Input: oip.Tensor{Shape: shape, Data: x}}); err != nil {
				b.Fatal(err)
			}
		}
	})
	fake := oiptest.New()
	fake.Add(oip.ModelInfo{Name: "k", InputShape: []int{64}, OutputShape: []int{64}, Placement: "cpu", Executor: "cpu-f32"}, oiptest.Scale(1))
	raw, _ := request(1, 64, false)
	for _, c := range []struct {
		name    string
		backend oip.Backend
	}{{"handler/host", be}, {"handler/fake", fake}} {
		handler := oip.NewHandler(c.backend, oip.HostViews{}, oip.Options{}, nil)
		body := &rewindBody{}
		r := httptest.NewRequest("POST", "/v2/models/k/infer", nil)
		r.Body, r.ContentLength = body, int64(len(raw))
		w := &discardWriter{h: http.Header{}}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				serve(b, handler, r, body, raw, w)
			}
		})
	}
}
