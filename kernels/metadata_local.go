package kernels

import (
	"encoding/json"
	"fmt"
)

// KernelMetadata is the part of contracts.KernelMetadata the loader reads.
// It is a stand-in until the contracts package is committed; the loader
// switches to contracts.KernelMetadata then.
type KernelMetadata struct {
	KernelID           string   `json:"kernel_id"`
	BlueprintID        string   `json:"blueprint_id"`
	Name               string   `json:"name"`
	InputShape         []int    `json:"input_shape"`
	OutputShape        []int    `json:"output_shape"`
	ParameterCount     int      `json:"parameter_count"`
	DeviceRequirements []string `json:"device_requirements"`
	MemoryFootprintMB  float64  `json:"memory_footprint_mb"`
	CompilationTarget  string   `json:"compilation_target"`
	Checksum           *string  `json:"checksum"`
}

func decodeKernelMetadata(data []byte) (*KernelMetadata, error) {
	md := &KernelMetadata{CompilationTarget: "torchscript"}
	if err := json.Unmarshal(data, md); err != nil {
		return nil, fmt.Errorf("decode KernelMetadata: %w", err)
	}
	return md, nil
}
