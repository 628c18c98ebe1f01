//go:build !openblas || !cgo

package gemm

// registerOpenBLAS does nothing: this build has no OpenBLAS route.
func registerOpenBLAS() {}
