// Package torchexport holds the Python tools that make kernels for the host
// where PyTorch is (see README.md): esper_export.py turns a
// torch.nn.Sequential into an esper-kernel/v1 file with its KernelMetadata,
// and esper_convert.py converts what Esper's compiler writes (torch.save'd
// modules, Tezzeret's torch.compile dict, TorchScript) into the same format,
// so that the host never has to unpickle anything. The Go tests prove the
// round trip: models exported or converted from PyTorch, fetched and loaded
// by the host's kernels package, produce PyTorch's outputs. There is no Go
// API here; the tools are Python because kernels are made where PyTorch is.
package torchexport
