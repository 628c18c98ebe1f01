package contracts

import (
	"encoding/json"
	"os"
	"testing"
)

func benchInput(b *testing.B, name string) []byte {
	b.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkHealthSignalDecode decodes and validates a HealthSignal.
func BenchmarkHealthSignalDecode(b *testing.B) {
	data := benchInput(b, "bench_health_signal.json")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHealthSignal(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHealthSignalEncode encodes a HealthSignal.
func BenchmarkHealthSignalEncode(b *testing.B) {
	h, err := DecodeHealthSignal(benchInput(b, "bench_health_signal.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	buf := make([]byte, 0, 512)
	for b.Loop() {
		buf = h.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkCompiledKernelDecode decodes and validates a CompiledKernel
// with its nested metadata.
func BenchmarkCompiledKernelDecode(b *testing.B) {
	data := benchInput(b, "bench_compiled_kernel.json")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeCompiledKernel(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompiledKernelEncode encodes a CompiledKernel.
func BenchmarkCompiledKernelEncode(b *testing.B) {
	c, err := DecodeCompiledKernel(benchInput(b, "bench_compiled_kernel.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	buf := make([]byte, 0, 2048)
	for b.Loop() {
		buf = c.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkCompiledKernelSmallDecode decodes and validates a small
// CompiledKernel: the required fields, a device list, two timestamps
// and a checksum, with every other field left to its default but
// kernel_id (a kernel document always carries its identity).
func BenchmarkCompiledKernelSmallDecode(b *testing.B) {
	data := benchInput(b, "bench_compiled_kernel_small.json")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeCompiledKernel(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompiledKernelSmallEncode encodes the small CompiledKernel.
func BenchmarkCompiledKernelSmallEncode(b *testing.B) {
	c, err := DecodeCompiledKernel(benchInput(b, "bench_compiled_kernel_small.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	buf := make([]byte, 0, 2048)
	for b.Loop() {
		buf = c.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkHealthSignalDecodeStdlib is the encoding/json baseline (no
// validation) the hand-written decoder is measured against.
func BenchmarkHealthSignalDecodeStdlib(b *testing.B) {
	data := benchInput(b, "bench_health_signal.json")
	type plain HealthSignal
	b.ReportAllocs()
	for b.Loop() {
		var p plain
		if err := json.Unmarshal(data, &p); err != nil {
			b.Fatal(err)
		}
	}
}
