package kernels

import (
	"fmt"

	"github.com/esper/kasmina-host/contracts"
)

// KernelMetadata is the contract's KernelMetadata: the loader reads its
// shapes, parameter count, compilation target, memory footprint and
// checksum.
type KernelMetadata = contracts.KernelMetadata

// decodeKernelMetadata decodes and validates an embedded or supplied
// KernelMetadata document with the contract's rules and defaults.
func decodeKernelMetadata(data []byte) (*KernelMetadata, error) {
	md, err := contracts.DecodeKernelMetadata(data)
	if err != nil {
		return nil, fmt.Errorf("decode KernelMetadata: %w", err)
	}
	return &md, nil
}
