// Package kernels reads, validates and executes portable Esper kernels: the
// esper-kernel/v1 safetensors format that kernels/KERNEL_FORMAT.md describes
// (what this package accepts, check by check), whose module graph mirrors
// torch.nn and whose outputs match PyTorch in eval() mode.
//
// # Files
//
// ParseSafetensors validates a whole file held in memory before allocating
// anything from its declared sizes (header length and UTF-8, duplicate keys,
// dtypes, element-count overflow, offsets inside the buffer, contiguous and
// non-overlapping tensors, no trailing bytes, string-only metadata); every
// rejection wraps ErrMalformed and names the tensor, field or byte offset.
// Before any of that it recognises what Esper's compiler used to write
// instead (torch.save archives in zip or legacy pickle form, TorchScript
// archives, other pickles and zips) from their magic numbers and zip entry
// names, and refuses them with a *ForeignFileError that says what the file
// is and names the compile-side converter; nothing is unpickled or run.
// WriteSafetensors and WriteKernel write files; F32Tensor builds a tensor.
// ParseModule parses the esper.module graph (every op of the format, with
// PyTorch's constructor defaults) and (*Module).MarshalJSON writes it back.
//
// # Loading
//
// Load (or LoadFile) checks, in order: the supplied KernelMetadata's
// compilation target (torchscript and pickle are refused with
// ErrTargetNotExecutable; ReadMetadata still reads their metadata) and its
// checksum against the SHA-256 of the file (ErrChecksumMismatch), the file
// structure, the format key, the embedded esper.kernel_metadata (decoded and
// validated by the contracts package), the module graph, shape inference
// through every layer (a graph whose shapes do not chain is refused at load),
// the tensors against the graph (names and shapes, nothing missing or extra;
// integer buffers such as num_batches_tracked are ignored; F16/BF16 widen
// exactly, F64 rounds once), and the agreement of input_shape, output_shape
// and parameter_count with the module (ErrMetadataMismatch).
//
// A loaded Kernel reports InputShape and OutputShape (without batch),
// ParameterCount (as PyTorch counts parameters: running statistics excluded),
// MACsPerSample (multiply-adds of linear and convolution layers, so that
// 2·MACs·batch/latency is the FLOP rate), MemoryEstimateMiB(batch) (weights,
// input, output, intermediate buffers and convolution scratch) and
// MemoryCheck, the comparison with the declared memory_footprint_mb, which is
// reported, never refused.
//
// # Executing
//
// (*Kernel).Run(ctx, input, batch, out) computes in float32 over row-major
// [batch, *shape] slices. A Kernel is immutable and safe for any number of
// concurrent callers; each call takes a workspace (two ping-pong activation
// buffers and an im2col scratch) from a per-kernel bounded free list, so a steady
// stream of same-shaped requests allocates nothing. Linear layers run as one
// fused GEMM with bias and activation epilogue; conv2d runs as im2col (or the
// input itself for pointwise convolutions) + GEMM per sample and group, with
// stride, padding, dilation and groups; every matrix product goes through
// kernels/gemm, so the build's choice of GEMM (pure Go by default, OpenBLAS
// with -tags openblas, KASMINA_GEMM to override at run time) serves all of
// them. Batch norm folds into a per-channel scale and shift computed in
// float64; layer norm and adaptive average pooling accumulate in float64;
// tanh, sigmoid and GELU (erf or tanh form) are evaluated in float64 and
// rounded once. Weights exposes the converted tensors as plain []float32;
// kernels/dense is the gorgonia.org/tensor face (parameters as
// *tensor.Dense, Run on tensors), kept apart so that the daemon does not
// link gorgonia.
//
// # Gradients
//
// Backward computes the vector-Jacobian product of every op the executor
// runs, gradIn = (∂out/∂input)ᵀ·gradOut, for training that needs ∂loss/∂x
// to flow through a kernel; the weights are compiled constants and get no
// gradient. Forward is Run that also records a Tape: only what the
// backward formulas read (an activation's output for ReLU, tanh and
// sigmoid, its input for the GELUs, a layer norm's input), copied, so a
// caller can run the forward now and Tape.Backward later without keeping
// the input; the one-shot Backward records into a pooled tape, and skips
// the forward altogether for kernels that need nothing from it (linear,
// convolution, batch norm, pooling). Linear layers back-propagate as one
// GEMM (dx = dy·W); convolutions as a GEMM with the transposed weights per
// sample and group (dcol = W_gᵀ·dy_g) and col2im; batch norm by its folded
// scale; layer norm and adaptive average pooling accumulate in float64 as
// their forwards do; the activations' derivatives (gemm.Activation.Backward)
// are evaluated in float64 and rounded once, with PyTorch's conventions
// (ReLU's gradient is dy where the output is > 0, NaN passing). Backward is
// safe for concurrent use, a Tape for one call at a time.
//
// # Verification
//
// TestKernelGolden runs every case of testdata/golden (PyTorch reference
// outputs; KERNEL_GOLDEN_DIR points it elsewhere) and prints
// "kernel golden: P passed, F failed (of T)". TestKernelGradGolden checks
// Backward on the same cases against PyTorch's float64 autograd
// (grad.safetensors, written by testdata/golden/make_grads.py) within the
// larger of the case's tolerance and ten times PyTorch's own float32
// error, and prints "kernel grad golden: P passed, F failed (of T)";
// TestBackwardMatchesFiniteDifferences checks every op type against
// central differences of an independent float64 forward. Fuzz targets
// cover the safetensors reader, the whole loader and the module graph
// parser.
package kernels
