package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/gemm"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime"
)

// runReport is the one JSON object `run --json` prints.
type runReport struct {
	KernelID      string  `json:"kernel_id"`
	KernelSHA256  string  `json:"kernel_sha256"`
	InputShape    []int   `json:"input_shape"`
	OutputShape   []int   `json:"output_shape"`
	Batch         int     `json:"batch"`
	Calls         int     `json:"calls"`
	P50us         float64 `json:"p50_us"`
	P99us         float64 `json:"p99_us"`
	MeanUs        float64 `json:"mean_us"`
	MinUs         float64 `json:"min_us"`
	MACsPerCall   int64   `json:"macs_per_call"`
	GFLOPS        float64 `json:"gflops"`
	GEMM          string  `json:"gemm"`
	ParameterCnt  int     `json:"parameter_count"`
	MemoryMiB     float64 `json:"memory_estimate_mib"`
	OutputWritten string  `json:"output_file,omitempty"`
}

func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kernelRef := fs.String("kernel", "", "kernel to run: a local esper-kernel/v1 file")
	inputPath := fs.String("input", "", "safetensors file holding the tensor `input` ([batch, *input_shape])")
	outputPath := fs.String("output", "", "write the tensor `output` (F32 safetensors) to this file")
	repeat := fs.Int("repeat", 1, "time this many calls (after one warm-up call) and report p50/p99 and GFLOP/s")
	asJSON := fs.Bool("json", false, "print exactly one JSON object on stdout")
	verbose := fs.Bool("v", false, "debug logging on stderr")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kasmina-host run --kernel PATH --input FILE.safetensors [--output FILE] [--repeat N] [--json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *kernelRef == "" || *inputPath == "" || *repeat < 1 || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "run: --kernel and --input are required, --repeat must be at least 1, and no positional arguments are taken")
		fs.Usage()
		return exitUsage
	}
	if err := gemm.EnvError(); err != nil {
		fmt.Fprintf(stderr, "kasmina-host run: %v\n", err)
		return exitUsage
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	k, err := loadKernel(ctx, *kernelRef, log)
	if err != nil {
		log.Error("load kernel", slog.String("kernel", *kernelRef), slog.Any("error", err))
		return exitFatal
	}
	input, batch, err := readInputTensor(*inputPath, k)
	if err != nil {
		log.Error("read input", slog.String("input", *inputPath), slog.Any("error", err))
		return exitFatal
	}
	out := make([]float32, batch*k.OutputSize())

	// One warm-up call grows the workspace; the timed calls then allocate
	// nothing. With --repeat 1 the single call is the timed one.
	if *repeat > 1 {
		if err := k.Run(ctx, input, batch, out); err != nil {
			log.Error("run", slog.Any("error", err))
			return exitFatal
		}
	}
	lat := make([]time.Duration, *repeat)
	for i := range lat {
		start := time.Now()
		if err := k.Run(ctx, input, batch, out); err != nil {
			log.Error("run", slog.Int("call", i), slog.Any("error", err))
			return exitFatal
		}
		lat[i] = time.Since(start)
	}

	rep := summarize(k, batch, lat)
	if *outputPath != "" {
		shape := append([]int{batch}, k.OutputShape()...)
		if err := writeOutputTensor(*outputPath, shape, out); err != nil {
			log.Error("write output", slog.String("output", *outputPath), slog.Any("error", err))
			return exitFatal
		}
		rep.OutputWritten = *outputPath
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(rep); err != nil {
			log.Error("write report", slog.Any("error", err))
			return exitFatal
		}
		return exitOK
	}
	fmt.Fprintf(stdout, "kernel %s: input %v → output %v, batch %d, gemm %s\n",
		rep.KernelID, append([]int{batch}, rep.InputShape...), append([]int{batch}, rep.OutputShape...), batch, rep.GEMM)
	if *repeat > 1 {
		fmt.Fprintf(stdout, "%d calls: p50 %.2f µs, p99 %.2f µs, mean %.2f µs, %.3f GFLOP/s (%d MACs per call)\n",
			rep.Calls, rep.P50us, rep.P99us, rep.MeanUs, rep.GFLOPS, rep.MACsPerCall)
	} else {
		fmt.Fprintf(stdout, "1 call: %.2f µs\n", rep.P50us)
	}
	if rep.OutputWritten != "" {
		fmt.Fprintf(stdout, "output written to %s\n", rep.OutputWritten)
	}
	return exitOK
}

// loadKernel turns a kernel reference into a loaded kernel. It is the one
// place that resolves references, so URL sources plug in here.
func loadKernel(ctx context.Context, ref string, log *slog.Logger) (*kernels.Kernel, error) {
	var k *kernels.Kernel
	var err error
	if strings.Contains(ref, "://") {
		// A URL: fetched through the same sources as serve (file:// under
		// the working directory, http(s), s3); a local command may also
		// fetch from loopback.
		var f runtime.Fetcher
		f, err = newFetcher(&serveConfig{allowRefs: defaultAllowRefs, allowLoopbackRefs: true}, log)
		if err != nil {
			return nil, err
		}
		var b source.Blob
		if b, err = f.Fetch(ctx, ref, ""); err != nil {
			return nil, err
		}
		k, err = kernels.Load(b.Data, kernels.LoadOptions{Logger: log, SHA256: b.SHA256})
	} else {
		k, err = kernels.LoadFile(ref, kernels.LoadOptions{Logger: log})
	}
	if err != nil {
		return nil, err
	}
	mc := k.MemoryCheck()
	log.Info("kernel loaded",
		slog.String("kernel", k.ID()),
		slog.String("sha256", k.SHA256()),
		slog.Any("input_shape", k.InputShape()),
		slog.Any("output_shape", k.OutputShape()),
		slog.Int("parameters", k.ParameterCount()),
		slog.Float64("memory_estimate_mib", mc.EstimatedMiB),
		slog.Float64("memory_declared_mib", mc.DeclaredMiB))
	return k, nil
}

// readInputTensor reads the tensor named "input" and checks it against the
// kernel's input shape; it returns the values as float32 and the batch.
func readInputTensor(path string, k *kernels.Kernel) ([]float32, int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	f, err := kernels.ParseSafetensors(data)
	if err != nil {
		return nil, 0, err
	}
	t, ok := f.Tensor("input")
	if !ok {
		return nil, 0, fmt.Errorf("no tensor named \"input\" in %s", path)
	}
	want := k.InputShape()
	if len(t.Shape) != len(want)+1 || !slices.Equal(t.Shape[1:], want) || t.Shape[0] < 1 {
		return nil, 0, fmt.Errorf("tensor \"input\" has shape %v, the kernel takes [batch %v]", t.Shape, want)
	}
	v, err := t.Float32s()
	if err != nil {
		return nil, 0, err
	}
	return v, t.Shape[0], nil
}

func writeOutputTensor(path string, shape []int, out []float32) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := kernels.WriteSafetensors(w, []kernels.Tensor{kernels.F32Tensor("output", shape, out)}, nil); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// summarize computes the latency percentiles (nearest rank) and GFLOP/s at
// the median: 2 × multiply-adds per call / p50.
func summarize(k *kernels.Kernel, batch int, lat []time.Duration) runReport {
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	pct := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(sorted)))) - 1
		return sorted[max(0, min(i, len(sorted)-1))]
	}
	var total time.Duration
	for _, d := range lat {
		total += d
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	macs := k.MACsPerSample() * int64(batch)
	p50 := pct(0.50)
	rep := runReport{
		KernelID:     k.ID(),
		KernelSHA256: k.SHA256(),
		InputShape:   k.InputShape(),
		OutputShape:  k.OutputShape(),
		Batch:        batch,
		Calls:        len(lat),
		P50us:        us(p50),
		P99us:        us(pct(0.99)),
		MeanUs:       us(total) / float64(len(lat)),
		MinUs:        us(sorted[0]),
		MACsPerCall:  macs,
		GEMM:         kernels.GEMMImplementation(),
		ParameterCnt: k.ParameterCount(),
		MemoryMiB:    k.MemoryEstimateMiB(batch),
	}
	if p50 > 0 {
		rep.GFLOPS = 2 * float64(macs) / float64(p50.Nanoseconds())
	}
	return rep
}
