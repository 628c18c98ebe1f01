package kernels

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
)

// FormatV1 is the value of the "format" metadata key of a portable kernel.
const FormatV1 = "esper-kernel/v1"

// Metadata keys of an esper-kernel/v1 file.
const (
	MetaFormat         = "format"
	MetaModule         = "esper.module"
	MetaKernelMetadata = "esper.kernel_metadata"
)

// Sentinel errors callers branch on.
var (
	// ErrTargetNotExecutable refuses kernels compiled for a target the host
	// never executes (torchscript, pickle): running them means running code.
	ErrTargetNotExecutable = errors.New("compilation target is not executable by the host")
	// ErrChecksumMismatch refuses a file whose SHA-256 differs from
	// KernelMetadata.Checksum.
	ErrChecksumMismatch = errors.New("kernel checksum mismatch")
	// ErrMetadataMismatch refuses a file whose module disagrees with its
	// KernelMetadata (input_shape, output_shape, parameter_count).
	ErrMetadataMismatch = errors.New("kernel metadata disagrees with the module")
	// ErrShape is returned by Run for an input or output of the wrong size.
	ErrShape = errors.New("tensor shape mismatch")
)

// LoadOptions tune Load.
type LoadOptions struct {
	// Metadata is the KernelMetadata of the CompiledKernel (or Urza record)
	// that points at the file. When set, its checksum is verified, its
	// compilation target checked and its shapes and parameter count must
	// agree with the module. It takes precedence over the embedded metadata
	// for Kernel.Metadata.
	Metadata *KernelMetadata
	// InputShape is the per-sample input shape (without batch), needed only
	// when neither Metadata nor the file's embedded metadata gives one.
	InputShape []int
	// Logger receives the memory-estimate comparison; nil discards.
	Logger *slog.Logger
	// SHA256 is the lowercase hex SHA-256 of the file's bytes when the
	// caller has it already (an artifact source computes it while
	// streaming them): Load then does not hash the bytes again. It must be
	// their digest; empty, Load computes it.
	SHA256 string
}

// MemoryCheck compares the loader's own memory estimate with the declared
// KernelMetadata.memory_footprint_mb. A difference is reported, not refused:
// declared footprints are rounded estimates.
type MemoryCheck struct {
	// Batch is the batch size EstimatedMiB was computed for.
	Batch int
	// EstimatedMiB is Kernel.MemoryEstimateMiB(Batch).
	EstimatedMiB float64
	// DeclaredMiB is memory_footprint_mb; Declared is false when no metadata
	// declared one.
	DeclaredMiB float64
	Declared    bool
	// DifferenceMiB is EstimatedMiB - DeclaredMiB.
	DifferenceMiB float64
}

// Kernel is a validated, loaded portable kernel. It is immutable and safe for
// concurrent use: each Run takes its own workspace from a free list.
type Kernel struct {
	meta     *KernelMetadata
	embedded *KernelMetadata
	module   *Module
	g        *graph
	sha256   string
	memory   MemoryCheck
	pool     workspacePool
}

// ReadMetadata returns the KernelMetadata embedded in an esper-kernel/v1 file
// without building the module, whatever its compilation target; it returns
// nil metadata and no error when none is embedded.
func ReadMetadata(data []byte) (*KernelMetadata, error) {
	f, err := ParseSafetensors(data)
	if err != nil {
		return nil, err
	}
	if err := checkFormat(f); err != nil {
		return nil, err
	}
	raw, ok := f.Metadata[MetaKernelMetadata]
	if !ok {
		return nil, nil
	}
	md, err := decodeKernelMetadata([]byte(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: metadata %s: %w", ErrMalformed, MetaKernelMetadata, err)
	}
	return md, nil
}

func checkFormat(f *File) error {
	v, ok := f.Metadata[MetaFormat]
	if !ok {
		return fmt.Errorf("%w: __metadata__ has no %q key (want %q)", ErrMalformed, MetaFormat, FormatV1)
	}
	if v != FormatV1 {
		return fmt.Errorf("%w: __metadata__.%s is %s, want %q", ErrMalformed, MetaFormat, quote(v), FormatV1)
	}
	return nil
}

// CheckTarget returns an error wrapping ErrTargetNotExecutable when the
// metadata's compilation target is one the host refuses to execute.
func CheckTarget(md *KernelMetadata) error {
	if md == nil {
		return nil
	}
	switch t := strings.ToLower(strings.TrimSpace(md.CompilationTarget)); t {
	case "torchscript", "pickle":
		return fmt.Errorf("kernel %s: compilation_target %s: %w (only %s safetensors files run)", quote(md.KernelID), quote(md.CompilationTarget), ErrTargetNotExecutable, FormatV1)
	}
	return nil
}

// LoadFile reads a kernel file and loads it; see Load.
func LoadFile(path string, opts LoadOptions) (*Kernel, error) {
	if opts.Metadata != nil {
		if err := CheckTarget(opts.Metadata); err != nil {
			return nil, err
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	k, err := Load(data, opts)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	return k, nil
}

// Load validates an esper-kernel/v1 file and builds its executor. In order:
// the supplied metadata's compilation target and checksum (SHA-256 of data),
// the safetensors structure, the format key, the embedded metadata, the module
// graph, shape inference, the tensors against the graph, and the agreement of
// both metadata with the module. data is not retained after Load returns.
func Load(data []byte, opts LoadOptions) (*Kernel, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := CheckTarget(opts.Metadata); err != nil {
		return nil, err
	}
	digest := opts.SHA256
	if digest == "" {
		sum := sha256.Sum256(data)
		digest = hex.EncodeToString(sum[:])
	} else if b, err := hex.DecodeString(digest); err != nil || len(b) != sha256.Size || hex.EncodeToString(b) != digest {
		return nil, fmt.Errorf("LoadOptions.SHA256 %q is not a lowercase hex SHA-256", digest)
	}
	if md := opts.Metadata; md != nil && md.Checksum != nil && *md.Checksum != "" {
		if want := strings.ToLower(*md.Checksum); want != digest {
			return nil, fmt.Errorf("%w: file SHA-256 is %s, KernelMetadata.checksum is %s", ErrChecksumMismatch, digest, *md.Checksum)
		}
	}
	f, err := ParseSafetensors(data)
	if err != nil {
		return nil, err
	}
	if err := checkFormat(f); err != nil {
		return nil, err
	}
	var embedded *KernelMetadata
	if raw, ok := f.Metadata[MetaKernelMetadata]; ok {
		embedded, err = decodeKernelMetadata([]byte(raw))
		if err != nil {
			return nil, fmt.Errorf("%w: metadata %s: %w", ErrMalformed, MetaKernelMetadata, err)
		}
		if err := CheckTarget(embedded); err != nil {
			return nil, err
		}
	}
	rawModule, ok := f.Metadata[MetaModule]
	if !ok {
		return nil, fmt.Errorf("%w: __metadata__ has no %q key", ErrMalformed, MetaModule)
	}
	module, err := ParseModule([]byte(rawModule))
	if err != nil {
		return nil, err
	}
	inShape := opts.InputShape
	switch {
	case inShape != nil:
	case opts.Metadata != nil && len(opts.Metadata.InputShape) > 0:
		inShape = opts.Metadata.InputShape
	case embedded != nil && len(embedded.InputShape) > 0:
		inShape = embedded.InputShape
	default:
		return nil, fmt.Errorf("%w: no input shape: the file embeds no %s and LoadOptions gives neither Metadata nor InputShape", ErrMalformed, MetaKernelMetadata)
	}
	g, err := buildGraph(module, inShape, f)
	if err != nil {
		return nil, err
	}
	k := &Kernel{meta: opts.Metadata, embedded: embedded, module: module, g: g, sha256: digest}
	if k.meta == nil {
		k.meta = embedded
	}
	for _, c := range []struct {
		src string
		md  *KernelMetadata
	}{{"supplied KernelMetadata", opts.Metadata}, {MetaKernelMetadata, embedded}} {
		if err := k.agree(c.md); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMetadataMismatch, c.src, err)
		}
	}
	k.memory = MemoryCheck{Batch: 1, EstimatedMiB: k.MemoryEstimateMiB(1)}
	if k.meta != nil {
		k.memory.Declared = true
		k.memory.DeclaredMiB = k.meta.MemoryFootprintMB
		k.memory.DifferenceMiB = k.memory.EstimatedMiB - k.memory.DeclaredMiB
	}
	log.Debug("kernel loaded",
		slog.String("kernel", k.ID()),
		slog.String("sha256", digest),
		slog.Int("parameters", g.params),
		slog.Int64("macs_per_sample", g.macs),
		slog.Float64("memory_estimate_mib", k.memory.EstimatedMiB),
		slog.Float64("memory_declared_mib", k.memory.DeclaredMiB),
		slog.Float64("memory_difference_mib", k.memory.DifferenceMiB))
	k.pool.init()
	return k, nil
}

// agree checks a KernelMetadata against the module.
func (k *Kernel) agree(md *KernelMetadata) error {
	if md == nil {
		return nil
	}
	if len(md.InputShape) > 0 && !slices.Equal(md.InputShape, k.g.inShape) {
		return fmt.Errorf("input_shape %v, the module is built for %v", md.InputShape, k.g.inShape)
	}
	if !slices.Equal(md.OutputShape, k.g.outShape) {
		return fmt.Errorf("output_shape %v, the module produces %v", md.OutputShape, k.g.outShape)
	}
	if md.ParameterCount != k.g.params {
		return fmt.Errorf("parameter_count %d, the module has %d", md.ParameterCount, k.g.params)
	}
	return nil
}

// ID returns the kernel id from the metadata, or the file's SHA-256 prefix.
func (k *Kernel) ID() string {
	if k.meta != nil && k.meta.KernelID != "" {
		return k.meta.KernelID
	}
	return "sha256:" + k.sha256[:16]
}

// Metadata returns the supplied KernelMetadata, else the embedded one, else
// nil. Callers must not modify it.
func (k *Kernel) Metadata() *KernelMetadata { return k.meta }

// EmbeddedMetadata returns the metadata embedded in the file, or nil.
func (k *Kernel) EmbeddedMetadata() *KernelMetadata { return k.embedded }

// Module returns the parsed module graph. Callers must not modify it.
func (k *Kernel) Module() *Module { return k.module }

// SHA256 returns the lowercase hex SHA-256 of the whole file.
func (k *Kernel) SHA256() string { return k.sha256 }

// InputShape returns the per-sample input shape (without batch).
func (k *Kernel) InputShape() []int { return append([]int(nil), k.g.inShape...) }

// OutputShape returns the per-sample output shape (without batch).
func (k *Kernel) OutputShape() []int { return append([]int(nil), k.g.outShape...) }

// InputSize returns the elements of one input sample.
func (k *Kernel) InputSize() int { return k.g.inSize }

// OutputSize returns the elements of one output sample.
func (k *Kernel) OutputSize() int { return k.g.outSize }

// ParameterCount returns the learnable parameters as PyTorch counts them
// (batch-norm running statistics excluded).
func (k *Kernel) ParameterCount() int { return k.g.params }

// MACsPerSample returns the multiply-adds of linear and convolution layers
// for one sample; 2 × MACsPerSample × batch / latency is the FLOP rate.
func (k *Kernel) MACsPerSample() int64 { return k.g.macs }

// MemoryEstimateMiB estimates the memory one call with this batch needs, in
// MiB: the float32 weights held by the kernel, the input and output, the two
// intermediate activation buffers, and the convolution scratch.
func (k *Kernel) MemoryEstimateMiB(batch int) float64 {
	g := k.g
	floats := float64(g.weightFloats) + float64(batch)*float64(g.inSize+g.outSize+2*g.maxAct) + float64(g.scratch)
	return floats * 4 / (1 << 20)
}

// ActivationSize returns the elements of one sample's largest intermediate
// activation: the biggest tensor passed between two steps of the module
// graph, not counting the input and the output (0 when the graph has one
// step).
func (k *Kernel) ActivationSize() int { return k.g.maxAct }

// RunBytes returns the bytes one Run with this batch needs besides its
// input, from the module graph's per-sample sizes: the output, the two
// activation buffers a workspace alternates between, and the convolution
// scratch. A caller bounds a request's memory with it before allocating
// anything; it saturates at math.MaxInt64 instead of overflowing.
func (k *Kernel) RunBytes(batch int) int64 {
	g := k.g
	if batch < 0 {
		batch = 0
	}
	perSample := 4 * (int64(g.outSize) + 2*int64(g.maxAct)) // under 2^31: shapeSize caps each at 2^28
	fixed := 4 * int64(g.scratch)
	if perSample > 0 && int64(batch) > (math.MaxInt64-fixed)/perSample {
		return math.MaxInt64
	}
	return int64(batch)*perSample + fixed
}

// MaxBatchWithin returns the largest batch whose RunBytes is at most limit
// bytes, 0 when even one sample needs more; a limit of 0 or less means no
// limit (math.MaxInt).
func (k *Kernel) MaxBatchWithin(limit int64) int {
	g := k.g
	perSample := 4 * (int64(g.outSize) + 2*int64(g.maxAct)) // at least 4: an output has an element
	room := limit - 4*int64(g.scratch)
	switch {
	case limit <= 0:
		return math.MaxInt
	case room < perSample:
		return 0
	}
	return int(min(room/perSample, int64(math.MaxInt)))
}

// MemoryCheck returns the comparison of the estimate with the declared
// memory_footprint_mb made at load.
func (k *Kernel) MemoryCheck() MemoryCheck { return k.memory }

// Weight is one float32 tensor of a loaded kernel, named as in PyTorch's
// state_dict ("0.weight", "2.running_var").
type Weight struct {
	Name  string
	Shape []int
	// Values holds the elements in row-major order, converted once at load
	// from the file's dtype. They are the executor's own: callers must not
	// modify them.
	Values []float32
}

// Weights returns the kernel's float tensors, sorted by name (integer
// buffers such as num_batches_tracked are not kept). The values share
// memory with the executor: callers must not modify them.
func (k *Kernel) Weights() []Weight {
	out := make([]Weight, 0, len(k.g.tensors))
	for _, w := range k.g.tensors {
		w.Shape = slices.Clone(w.Shape)
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b Weight) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Run computes the kernel on batch samples: input holds batch ×
// InputSize() float32 values ([batch, *InputShape()], row-major) and out
// receives batch × OutputSize() values. input is not modified and must not
// overlap out. Run is safe for concurrent use and, once the pool holds a
// workspace for this batch size, allocates nothing.
func (k *Kernel) Run(ctx context.Context, input []float32, batch int, out []float32) error {
	if err := k.checkRun(ctx, input, batch, out); err != nil {
		return err
	}
	ws := k.pool.get()
	k.g.forward(ws, input, batch, out, nil)
	k.pool.put(ws)
	return nil
}

// checkRun checks the context, the batch and the lengths of a forward call.
func (k *Kernel) checkRun(ctx context.Context, input []float32, batch int, out []float32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if batch < 1 {
		return fmt.Errorf("%w: batch %d must be positive", ErrShape, batch)
	}
	if len(input) != batch*k.g.inSize {
		return fmt.Errorf("%w: input has %d values, batch %d × %v needs %d", ErrShape, len(input), batch, k.g.inShape, batch*k.g.inSize)
	}
	if len(out) != batch*k.g.outSize {
		return fmt.Errorf("%w: output has room for %d values, batch %d × %v needs %d", ErrShape, len(out), batch, k.g.outShape, batch*k.g.outSize)
	}
	return nil
}
