//go:build amd64

package gemm

// registerPlatform registers the assembly engines this CPU supports.
func registerPlatform() {}
