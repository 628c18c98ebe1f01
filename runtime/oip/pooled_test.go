package oip_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/shm"
)

// reluKernel writes a ReLU kernel on width features (no weights).
func reluKernel(t testing.TB, width int) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{{Type: "relu"}}}
	md := contracts.NewKernelMetadata("relu", "bp-relu", "relu")
	md.InputShape, md.OutputShape = []int{width}, []int{width}
	md.DeviceRequirements = []string{"cpu"}
	md.MemoryFootprintMB = 1
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, nil, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Inputs and outputs of pooled sizes (wiretensor.GetFP32) go through
// reused buffers: requests of different batches in turn, over the binary
// extension (the binary part aligned and not) and over shared memory,
// each answer their own values, and an output written to a region
// touches only its bytes.
func TestPooledTensorsAnswerTheirOwnRequest(t *testing.T) {
	const width = 1024
	h := newHostFixtureWith(t, runtime.Config{}).host
	if _, err := h.Load(context.Background(), runtime.LoadRequest{Data: reluKernel(t, width)}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const regionBytes = 8 * width * 4
	if err := os.WriteFile(filepath.Join(dir, "t"), make([]byte, 2*regionBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	obj, err := os.OpenFile(filepath.Join(dir, "t"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	reg := shm.New(shm.Options{Dir: dir})
	defer reg.Close()
	for i, name := range []string{"in", "out"} {
		if err := reg.Register(name, "/t", uint64(i*regionBytes), regionBytes); err != nil {
			t.Fatal(err)
		}
	}
	handler := oip.NewHandler(oip.HostBackend(h), oip.HostViews{}, oip.Options{SharedMemory: reg}, slog.New(slog.DiscardHandler))
	post := func(body []byte, headerLen int) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/v2/models/relu/infer", bytes.NewReader(body))
		r.Host = "127.0.0.1:8090"
		if headerLen >= 0 {
			r.Header.Set("Inference-Header-Content-Length", strconv.Itoa(headerLen))
		}
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)
		return w
	}
	rng := rand.New(rand.NewPCG(5, 6))
	values := func(n int) ([]float32, []byte) {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		y := make([]float32, n)
		for i, v := range x {
			y[i] = max(v, 0)
		}
		return x, f32bytes(y...)
	}
	for round, batch := range []int{8, 5, 7, 2} {
		t.Run(fmt.Sprintf("round %d batch %d", round, batch), func(t *testing.T) {
			// Binary: the header padded so that the tensor starts at an
			// offset that is a multiple of 4 in even rounds, not in odd.
			x, want := values(batch * width)
			hdr := fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`,
				batch, width, 4*len(x))
			for len(hdr)%4 != 1+round%2 {
				hdr += " "
			}
			w := post(append([]byte(hdr), f32bytes(x...)...), len(hdr))
			if w.Code != 200 {
				t.Fatalf("binary: %d %s", w.Code, w.Body)
			}
			n, _ := strconv.Atoi(w.Header().Get("Inference-Header-Content-Length"))
			if got := w.Body.Bytes()[n:]; !bytes.Equal(got, want) {
				t.Fatalf("binary: %d bytes of output, want %d (ReLU of this request's input)", len(got), len(want))
			}

			// Shared memory: the output region's bytes past this output
			// keep a sentinel.
			x, want = values(batch * width)
			if _, err := obj.WriteAt(f32bytes(x...), 0); err != nil {
				t.Fatal(err)
			}
			sentinel := bytes.Repeat([]byte{0xa5}, regionBytes)
			if _, err := obj.WriteAt(sentinel, regionBytes); err != nil {
				t.Fatal(err)
			}
			body := fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"shared_memory_region":"in","shared_memory_byte_size":%d}}],`+
				`"outputs":[{"name":"output","parameters":{"shared_memory_region":"out","shared_memory_byte_size":%d}}]}`, batch, width, 4*len(x), regionBytes)
			if w := post([]byte(body), -1); w.Code != 200 || !strings.Contains(w.Body.String(), fmt.Sprintf(`"shape":[%d,%d]`, batch, width)) {
				t.Fatalf("shared memory: %d %s", w.Code, w.Body)
			}
			got := make([]byte, regionBytes)
			if _, err := obj.ReadAt(got, regionBytes); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:len(want)], want) {
				t.Fatal("shared memory: the output in the region is not ReLU of this request's input")
			}
			if !bytes.Equal(got[len(want):], sentinel[len(want):]) {
				t.Fatal("shared memory: bytes past the output were written")
			}
		})
	}
}

// A layer's tensors of pooled sizes go through reused buffers too (its
// inputs decoded from a misaligned binary part, its output computed into
// a pooled buffer): concurrent requests of different batches, each with
// its own input and default, each answer their own blend.
func TestPooledLayerTensorsAnswerTheirOwnRequest(t *testing.T) {
	const width = 1024
	h := newHostFixtureWith(t, runtime.Config{}).host
	ctx := context.Background()
	if _, err := h.Apply(ctx, runtime.DeclareLayer{Layer: "L"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(ctx, runtime.LoadRequest{Data: reluKernel(t, width), Name: "L.relu", Layer: "L", SeedIdx: 0}); err != nil {
		t.Fatal(err)
	}
	// At alpha 1 the blend is 0·default + ReLU(x), exact in FP32.
	if _, err := h.Apply(ctx, runtime.SetAlpha{Layer: "L", SeedIdx: 0, Alpha: 1}); err != nil {
		t.Fatal(err)
	}
	handler := oip.NewHandler(oip.HostBackend(h), oip.HostViews{}, oip.Options{}, slog.New(slog.DiscardHandler))
	const workers, rounds = 8, 8
	errs := make(chan error, workers*rounds)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(7, uint64(w)))
			for round := range rounds {
				batch := []int{8, 5, 7}[(w+round)%3]
				n := batch * width
				x, d := make([]float32, n), make([]float32, n)
				want := make([]float32, n)
				for i := range x {
					x[i], d[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
					want[i] = max(x[i], 0)
				}
				hdr := fmt.Sprintf(`{"inputs":[`+
					`{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}},`+
					`{"name":"default","shape":[%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],`+
					`"outputs":[{"name":"output","parameters":{"binary_data":true}}]}`, batch, width, 4*n, batch, width, 4*n)
				// The binary part aligned in even rounds, not in odd.
				for len(hdr)%4 != 1+round%2 {
					hdr += " "
				}
				body := append([]byte(hdr), f32bytes(x...)...)
				body = append(body, f32bytes(d...)...)
				r := httptest.NewRequest("POST", "/v2/models/L/infer", bytes.NewReader(body))
				r.Host = "127.0.0.1:8090"
				r.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(hdr)))
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, r)
				if rec.Code != 200 {
					errs <- fmt.Errorf("worker %d round %d: %d %s", w, round, rec.Code, rec.Body)
					return
				}
				hl, _ := strconv.Atoi(rec.Header().Get("Inference-Header-Content-Length"))
				if got := rec.Body.Bytes()[hl:]; !bytes.Equal(got, f32bytes(want...)) {
					errs <- fmt.Errorf("worker %d round %d (batch %d): %d bytes of output, not ReLU of this request's input", w, round, batch, len(got))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
