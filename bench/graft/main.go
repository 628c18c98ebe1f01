// Command graft is the atomic-graft load test (bench/graft/run.sh starts
// the daemon and runs it): it writes two kernels of one kernel_id and one
// shape (Linear(64→64)+ReLU, other weights) into the daemon's kernel
// root, declares layer "graft" and loads the first into its seed 0
// through the seed-control route (the Apply a bus load_kernel runs).
// Then closed-loop clients call the seed's kernel over HTTP as fast as
// the daemon answers (the machine's saturation rate), first for a
// baseline, then again while 100 load_kernel swaps alternate the two
// artifacts in the occupied slot. Every answer must be 200 with one
// kernel's output, never a mix, and every swap a kernel_load_success;
// it prints one line and a JSON object, and exits 1 otherwise.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
)

const (
	width  = 64
	kernel = "graft-k"
	layer  = "graft"
)

func main() {
	url := flag.String("url", "", "the daemon's base URL (http://127.0.0.1:PORT)")
	root := flag.String("root", "", "the daemon's --kernel-root, where the two artifacts are written")
	clients := flag.Int("clients", 16, "closed-loop HTTP clients")
	dur := flag.Duration("duration", 10*time.Second, "length of each phase (baseline, swaps)")
	swaps := flag.Int("swaps", 100, "swaps during the second phase")
	flag.Parse()
	if *url == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "graft: -url and -root are required")
		os.Exit(2)
	}
	res, err := run(*url, *root, *clients, *dur, *swaps)
	if res != nil {
		fmt.Println(res.line())
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "graft:", err)
		os.Exit(1)
	}
}

// model is one of the two kernels: its weights, bias and the output it
// gives for the test input.
type model struct {
	w, b []float32
	out  []float32
}

func newModel(seed uint64, x []float32) model {
	r := rand.New(rand.NewPCG(seed, 7))
	m := model{w: make([]float32, width*width), b: make([]float32, width), out: make([]float32, width)}
	for i := range m.w {
		m.w[i] = float32(r.NormFloat64() / 8)
	}
	for i := range m.b {
		m.b[i] = float32(r.NormFloat64())
	}
	for o := range width {
		s := float64(m.b[o])
		for i := range width {
			s += float64(m.w[o*width+i]) * float64(x[i])
		}
		m.out[o] = float32(max(s, 0))
	}
	return m
}

func (m model) write(path string) error {
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: width, OutFeatures: width, Bias: true}, {Type: "relu"},
	}}
	md := contracts.NewKernelMetadata(kernel, "bp-graft", kernel)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{width}, []int{width}, width*width+width
	md.MemoryFootprintMB = 1
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{width, width}, m.w), kernels.F32Tensor("0.bias", []int{width}, m.b),
	}, &md); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// matches reports whether got is m's output (to float32 rounding).
func (m model) matches(got []float32) bool {
	if len(got) != len(m.out) {
		return false
	}
	for i, v := range got {
		if math.Abs(float64(v-m.out[i])) > 1e-4*(1+math.Abs(float64(m.out[i]))) {
			return false
		}
	}
	return true
}

// phase is what one phase measured.
type phase struct {
	Requests   int64   `json:"requests"`
	RPS        float64 `json:"rps"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
	MaxUs      float64 `json:"max_us"`
	Non2xx     int64   `json:"non_2xx"`
	Errors     int64   `json:"transport_errors"`
	WrongOut   int64   `json:"wrong_outputs"`
	FromA      int64   `json:"answers_from_a"`
	FromB      int64   `json:"answers_from_b"`
	FirstError string  `json:"first_error,omitempty"`
}

type result struct {
	Clients      int     `json:"clients"`
	Duration     string  `json:"duration"`
	Baseline     phase   `json:"baseline"`
	Swapping     phase   `json:"swapping"`
	Swaps        int     `json:"swaps"`
	SwapsOK      int     `json:"swaps_ok"`
	SwapP50ms    float64 `json:"swap_p50_ms"`
	SwapMaxms    float64 `json:"swap_max_ms"`
	RPSRatio     float64 `json:"rps_swapping_over_baseline"`
	FinalKernel  string  `json:"final_kernel"`
	FinalHistory int     `json:"final_history"`
}

func (r *result) line() string {
	return fmt.Sprintf("graft: %d clients, %s per phase: baseline %d req (%.0f req/s, p50 %.2f ms, p99 %.2f ms); "+
		"with %d/%d swaps %d req (%.0f req/s = %.2fx, p50 %.2f ms, p99 %.2f ms, max %.1f ms), %d from A, %d from B; "+
		"non-2xx %d, transport errors %d, wrong outputs %d; swap p50 %.1f ms, max %.1f ms",
		r.Clients, r.Duration, r.Baseline.Requests, r.Baseline.RPS, r.Baseline.P50us/1000, r.Baseline.P99us/1000,
		r.SwapsOK, r.Swaps, r.Swapping.Requests, r.Swapping.RPS, r.RPSRatio, r.Swapping.P50us/1000, r.Swapping.P99us/1000, r.Swapping.MaxUs/1000,
		r.Swapping.FromA, r.Swapping.FromB, r.Baseline.Non2xx+r.Swapping.Non2xx, r.Baseline.Errors+r.Swapping.Errors,
		r.Baseline.WrongOut+r.Swapping.WrongOut, r.SwapP50ms, r.SwapMaxms)
}

func run(url, root string, clients int, dur time.Duration, swaps int) (*result, error) {
	x := make([]float32, width)
	for i := range x {
		x[i] = float32(i%7)/7 - 0.4
	}
	a, b := newModel(1, x), newModel(2, x)
	if err := a.write(filepath.Join(root, "graft-a.safetensors")); err != nil {
		return nil, err
	}
	if err := b.write(filepath.Join(root, "graft-b.safetensors")); err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients + 4, MaxConnsPerHost: clients + 4}}
	call := func(method, path, body string) (int, []byte, error) {
		req, err := http.NewRequest(method, url+path, bytes.NewBufferString(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		return resp.StatusCode, out, err
	}
	if code, body, err := call("PUT", "/v1/layers/"+layer, `{"num_seeds": 1, "input_shape": [64], "output_shape": [64]}`); err != nil || code/100 != 2 {
		return nil, fmt.Errorf("declaring layer %s: %d %s %v", layer, code, body, err)
	}
	load := func(artifact string) error {
		code, body, err := call("POST", "/v1/layers/"+layer+"/seeds/0/kernel", `{"artifact_id": "`+artifact+`"}`)
		if err != nil {
			return err
		}
		var o struct {
			EventType string `json:"event_type"`
			Kernel    string `json:"kernel"`
		}
		if code != http.StatusOK || json.Unmarshal(body, &o) != nil || o.EventType != "kernel_load_success" || o.Kernel != kernel {
			return fmt.Errorf("load_kernel %s: %d %s", artifact, code, body)
		}
		return nil
	}
	if err := load("graft-a.safetensors"); err != nil {
		return nil, err
	}
	xs, _ := json.Marshal(x)
	inferBody := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":` + string(xs) + `}]}`

	measure := func(during func(ctx context.Context)) phase {
		var (
			p        phase
			mu       sync.Mutex
			lat      []time.Duration
			firstErr atomic.Value
			wg       sync.WaitGroup
		)
		ctx, cancel := context.WithTimeout(context.Background(), dur)
		defer cancel()
		start := time.Now()
		for range clients {
			wg.Go(func() {
				var mine []time.Duration
				for ctx.Err() == nil {
					t0 := time.Now()
					code, body, err := call("POST", "/v2/models/"+kernel+"/infer", inferBody)
					mine = append(mine, time.Since(t0))
					atomic.AddInt64(&p.Requests, 1)
					switch {
					case err != nil:
						atomic.AddInt64(&p.Errors, 1)
						firstErr.CompareAndSwap(nil, err.Error())
					case code/100 != 2:
						atomic.AddInt64(&p.Non2xx, 1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", code, body))
					default:
						var r struct {
							Outputs []struct {
								Data []float32 `json:"data"`
							} `json:"outputs"`
						}
						switch {
						case json.Unmarshal(body, &r) != nil || len(r.Outputs) != 1:
							atomic.AddInt64(&p.WrongOut, 1)
							firstErr.CompareAndSwap(nil, "unreadable answer: "+string(body))
						case a.matches(r.Outputs[0].Data):
							atomic.AddInt64(&p.FromA, 1)
						case b.matches(r.Outputs[0].Data):
							atomic.AddInt64(&p.FromB, 1)
						default:
							atomic.AddInt64(&p.WrongOut, 1)
							firstErr.CompareAndSwap(nil, fmt.Sprint("an output of neither kernel: ", r.Outputs[0].Data))
						}
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
		}
		if during != nil {
			during(ctx)
		}
		wg.Wait()
		p.RPS = float64(p.Requests) / time.Since(start).Seconds()
		slices.Sort(lat)
		if n := len(lat); n > 0 {
			p.P50us, p.P99us, p.MaxUs = us(lat[n/2]), us(lat[n*99/100]), us(lat[n-1])
		}
		if e, ok := firstErr.Load().(string); ok {
			p.FirstError = e
		}
		return p
	}

	res := &result{Clients: clients, Duration: dur.String(), Swaps: swaps}
	res.Baseline = measure(nil)
	var (
		swapLat []time.Duration
		swapErr error
	)
	res.Swapping = measure(func(ctx context.Context) {
		// Swap i at (i+1)/(swaps+1) of the phase, whatever the swaps take.
		start := time.Now()
		for i := range swaps {
			time.Sleep(time.Until(start.Add(dur * time.Duration(i+1) / time.Duration(swaps+1))))
			artifact := "graft-b.safetensors"
			if i%2 == 1 {
				artifact = "graft-a.safetensors"
			}
			t0 := time.Now()
			if err := load(artifact); err != nil {
				swapErr = errors.Join(swapErr, fmt.Errorf("swap %d: %w", i+1, err))
				continue
			}
			swapLat = append(swapLat, time.Since(t0))
			res.SwapsOK++
		}
		if ctx.Err() != nil {
			swapErr = errors.Join(swapErr, fmt.Errorf("the swaps outlasted the phase (%s): lengthen -duration", dur))
		}
	})
	res.RPSRatio = res.Swapping.RPS / res.Baseline.RPS
	slices.Sort(swapLat)
	if n := len(swapLat); n > 0 {
		res.SwapP50ms, res.SwapMaxms = us(swapLat[n/2])/1000, us(swapLat[n-1])/1000
	}
	_, body, err := call("GET", "/v1/layers/"+layer, "")
	var v struct {
		Seeds []struct {
			Kernel  *string           `json:"kernel"`
			History []json.RawMessage `json:"history"`
		} `json:"seeds"`
	}
	if err == nil && json.Unmarshal(body, &v) == nil && len(v.Seeds) == 1 && v.Seeds[0].Kernel != nil {
		res.FinalKernel, res.FinalHistory = *v.Seeds[0].Kernel, len(v.Seeds[0].History)
	}
	var bad []error
	for name, p := range map[string]phase{"baseline": res.Baseline, "swapping": res.Swapping} {
		if p.Non2xx+p.Errors+p.WrongOut > 0 {
			bad = append(bad, fmt.Errorf("%s: %d non-2xx, %d transport errors, %d wrong outputs; first: %s", name, p.Non2xx, p.Errors, p.WrongOut, p.FirstError))
		}
	}
	if res.FinalKernel != kernel || res.FinalHistory != 0 {
		bad = append(bad, fmt.Errorf("the slot after the swaps holds %q with %d culled seeds, want %q and none (a swap keeps the seed)", res.FinalKernel, res.FinalHistory, kernel))
	}
	if res.Swapping.FromA == 0 || res.Swapping.FromB == 0 {
		bad = append(bad, fmt.Errorf("answers came from one kernel only (A %d, B %d): the swaps did not take", res.Swapping.FromA, res.Swapping.FromB))
	}
	return res, errors.Join(append(bad, swapErr)...)
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
