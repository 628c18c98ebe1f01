//go:build !amd64

package gemm

// fmaLoop reports that no assembly FMA loop exists on this architecture.
func fmaLoop() (string, func(int), float64) { return "", nil, 0 }
