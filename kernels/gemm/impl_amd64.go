//go:build amd64

package gemm

import "golang.org/x/sys/cpu"

// Tuned block sizes. kc keeps the A tile (mr×kc) in L1 next to the streaming
// Bᵀ rows; nc·kc floats of Bᵀ stay in L2 while a task walks down its rows.
func newAVX2() *native {
	e := &native{nm: "avx2", mr: 3, kc: 1024, nc: 32, mc: 48}
	e.kern = [][nr]kernFn{
		{dotAVX2_1x1, dotAVX2_1x2, dotAVX2_1x3, dotAVX2_1x4},
		{dotAVX2_2x1, dotAVX2_2x2, dotAVX2_2x3, dotAVX2_2x4},
		{dotAVX2_3x1, dotAVX2_3x2, dotAVX2_3x3, dotAVX2_3x4},
	}
	e.pk, e.pkMin = packAVX2_6x16, packedMinN
	return e
}

func newAVX512() *native {
	e := &native{nm: "avx512", mr: 6, kc: 768, nc: 32, mc: 48}
	e.kern = [][nr]kernFn{
		{dotAVX512_1x1, dotAVX512_1x2, dotAVX512_1x3, dotAVX512_1x4},
		{dotAVX512_2x1, dotAVX512_2x2, dotAVX512_2x3, dotAVX512_2x4},
		{dotAVX512_3x1, dotAVX512_3x2, dotAVX512_3x3, dotAVX512_3x4},
		{dotAVX512_4x1, dotAVX512_4x2, dotAVX512_4x3, dotAVX512_4x4},
		{dotAVX512_5x1, dotAVX512_5x2, dotAVX512_5x3, dotAVX512_5x4},
		{dotAVX512_6x1, dotAVX512_6x2, dotAVX512_6x3, dotAVX512_6x4},
	}
	return e
}

func hasAVX2() bool   { return cpu.X86.HasAVX2 && cpu.X86.HasFMA }
func hasAVX512() bool { return hasAVX2() && cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL }

// registerPlatform registers the assembly engines this CPU supports, widest
// first.
func registerPlatform() {
	if hasAVX512() {
		register(newAVX512())
	}
	if hasAVX2() {
		register(newAVX2())
	}
}

// reluVec computes relu on the longest prefix of src that is a whole
// number of AVX2 vectors, when the CPU has AVX2, and returns its length.
func reluVec(dst, src []float32) int {
	n := len(src) &^ 7
	if n == 0 || !hasAVX2() {
		return 0
	}
	reluAVX2(&dst[0], &src[0], n)
	return n
}
