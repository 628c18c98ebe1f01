//go:build amd64

package gemm

// fmaLoop returns the widest FMA loop this CPU runs and its flops per
// iteration (see fmaPeak in internal/asmgen).
func fmaLoop() (string, func(int), float64) {
	switch {
	case hasAVX512():
		return "avx512", fmaPeakAVX512, 24 * 16 * 2
	case hasAVX2():
		return "avx2", fmaPeakAVX2, 12 * 8 * 2
	}
	return "", nil, 0
}
