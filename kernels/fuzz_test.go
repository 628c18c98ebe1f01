package kernels

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// seedFiles returns valid kernel files from the golden set, truncated and
// corrupted variants of one of them, and the PyTorch files the reader
// refuses by name.
func seedFiles(f *testing.F) [][]byte {
	var seeds [][]byte
	paths := []string{}
	for _, id := range []string{"golden-1-004", "golden-1-007", "golden-1-015", "golden-1-021"} {
		paths = append(paths, filepath.Join("testdata", "golden", id, "kernel.safetensors"))
	}
	for _, tf := range torchFiles {
		paths = append(paths, filepath.Join("testdata", "torch", tf.name))
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	base := seeds[1]
	n := binary.LittleEndian.Uint64(base)
	seeds = append(seeds,
		base[:len(base)/2],           // truncated body
		base[:8+n/2],                 // truncated header
		append(bytes.Clone(base), 0), // trailing byte
	)
	big := bytes.Clone(base)
	binary.LittleEndian.PutUint64(big, 1<<40) // header length beyond the file
	seeds = append(seeds, big)
	flip := bytes.Clone(base)
	flip[8+n/3] ^= 0x20 // corrupt a header byte
	seeds = append(seeds, flip)
	return seeds
}

// FuzzParseSafetensors checks that no input panics the reader and that what
// it accepts survives a write/parse round trip.
func FuzzParseSafetensors(f *testing.F) {
	for _, s := range seedFiles(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseSafetensors(data)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, file.Tensors, file.Metadata); err != nil {
			t.Fatalf("rewrite of an accepted file failed: %v", err)
		}
		again, err := ParseSafetensors(buf.Bytes())
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		if len(again.Tensors) != len(file.Tensors) {
			t.Fatalf("round trip: %d tensors, want %d", len(again.Tensors), len(file.Tensors))
		}
		for i, tt := range file.Tensors {
			if !bytes.Equal(again.Tensors[i].Data, tt.Data) || !slices.Equal(again.Tensors[i].Shape, tt.Shape) {
				t.Fatalf("round trip changed tensor %q", tt.Name)
			}
		}
	})
}

// FuzzLoadKernel drives the whole loader (safetensors, module graph, shape
// inference, tensor binding) and runs whatever it accepts once, forward
// and backward.
func FuzzLoadKernel(f *testing.F) {
	for _, s := range seedFiles(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := Load(data, LoadOptions{})
		if err != nil {
			return
		}
		if k.InputSize() > 1<<16 || k.MACsPerSample() > 1<<24 {
			return // accepted, but too large to run on every fuzz input
		}
		in := make([]float32, k.InputSize())
		out := make([]float32, k.OutputSize())
		if err := k.Run(t.Context(), in, 1, out); err != nil {
			t.Fatalf("Run on an accepted kernel: %v", err)
		}
		if err := k.Backward(t.Context(), in, 1, out, make([]float32, len(in))); err != nil {
			t.Fatalf("Backward on an accepted kernel: %v", err)
		}
	})
}

// FuzzParseModule checks that no module graph panics the parser or the
// shape inference, and that accepted graphs survive an encode/parse round
// trip.
func FuzzParseModule(f *testing.F) {
	for _, id := range []string{"golden-1-004", "golden-1-005", "golden-1-007", "golden-1-020", "golden-1-031"} {
		b, err := os.ReadFile(filepath.Join("testdata", "golden", id, "kernel.safetensors"))
		if err != nil {
			f.Fatal(err)
		}
		file, err := ParseSafetensors(b)
		if err != nil {
			f.Fatal(err)
		}
		mod := file.Metadata[MetaModule]
		f.Add(mod, 3, 8, 8)
		f.Add(mod[:len(mod)/2], 3, 8, 8)
	}
	f.Add(`{"type":"sequential","layers":[{"type":"flatten","start_dim":-3,"end_dim":-1}]}`, 2, 3, 4)
	f.Add(`{"type":"sequential","layers":[{"type":"adaptive_avg_pool2d","output_size":[null,2]}]}`, 2, 3, 4)
	f.Fuzz(func(t *testing.T, js string, c, h, w int) {
		m, err := ParseModule([]byte(js))
		if err != nil {
			return
		}
		b, err := m.MarshalJSON()
		if err != nil {
			t.Fatalf("encode an accepted module: %v", err)
		}
		m2, err := ParseModule(b)
		if err != nil {
			t.Fatalf("reparse %s: %v", b, err)
		}
		if b2, _ := m2.MarshalJSON(); !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the module: %s vs %s", b, b2)
		}
		for _, shape := range [][]int{{c}, {c, h}, {c, h, w}} {
			if _, err := shapeSize(shape); err == nil {
				_, _, _, _ = inferGraph(m, shape)
			}
		}
	})
}
