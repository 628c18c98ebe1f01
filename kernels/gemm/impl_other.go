//go:build !amd64

package gemm

// registerPlatform registers nothing: only the portable kernels exist here.
func registerPlatform() {}

// reluVec does nothing: relu has no vector code here.
func reluVec(dst, src []float32) int { return 0 }
