//go:build !amd64

package gemm

// registerPlatform registers nothing: only the portable kernels exist here.
func registerPlatform() {}
