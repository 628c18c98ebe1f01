// Package torchexport holds esper_export.py, the Python exporter that turns a
// torch.nn.Sequential into an esper-kernel/v1 file with its KernelMetadata
// (see README.md), and the Go test that proves the round trip: models
// exported from PyTorch, fetched and loaded by the host's kernels package,
// produce PyTorch's outputs. There is no Go API here; the exporter is Python
// because kernels are made where PyTorch is.
package torchexport
