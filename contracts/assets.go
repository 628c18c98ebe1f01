package contracts

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// The asset models' types, decoders, checks and encoders are generated
// (models_gen.go, from the spec in internal/modelgen); their
// constructors and methods are here.

func newUUID() string { return uuid.NewString() }

// NewSeed returns a dormant seed with a fresh UUID and timestamps now.
func NewSeed(layerID, position int) Seed {
	now := Now()
	return Seed{SeedID: newUUID(), LayerID: layerID, Position: position, State: SeedDormant,
		CreatedAt: now, UpdatedAt: now, Metadata: map[string]any{}}
}

// StateDisplay is the state title-cased ("Dormant").
func (s Seed) StateDisplay() string { return title(string(s.State)) }

// IsActive reports a seed in training or grafting.
func (s Seed) IsActive() bool { return s.State == SeedTraining || s.State == SeedGrafting }

// Transition moves the seed to state to at time now, refusing any change
// the state machine does not allow with an error wrapping
// ErrIllegalTransition.
func (s *Seed) Transition(to SeedState, now time.Time) error {
	if !s.State.CanTransitionTo(to) {
		return &TransitionError{Machine: "seed " + s.SeedID, From: string(s.State), To: string(to)}
	}
	s.State = to
	s.UpdatedAt = now
	return nil
}

var seedStateNames = func() []string {
	out := make([]string, len(SeedStates))
	for i, s := range SeedStates {
		out[i] = string(s)
	}
	return out
}()

var blueprintStateNames = func() []string {
	out := make([]string, len(BlueprintStates))
	for i, s := range BlueprintStates {
		out[i] = string(s)
	}
	return out
}()

var topicNames = func() []string {
	out := make([]string, len(TopicNames))
	for i, s := range TopicNames {
		out[i] = string(s)
	}
	return out
}()

func enumReason(got string, allowed []string) string {
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = "'" + a + "'"
	}
	return "input should be one of " + strings.Join(q, ", ") + ", got " + strconv.Quote(got)
}

// enum decodes an enum field: exactly one of allowed, as a JSON string.
func (d *decoder) enum(prefix, name string, allowed []string) (string, bool) {
	if d.data[d.pos] != '"' {
		d.typeError(join(prefix, name), enumReason("non-string value", allowed))
		return "", false
	}
	b, ok := d.readString()
	if !ok {
		return "", false
	}
	for _, a := range allowed {
		if string(b) == a {
			return a, true
		}
	}
	d.errs.add(join(prefix, name), enumReason(string(b), allowed))
	return "", false
}

// NewBlueprint returns a proposed blueprint with a fresh UUID, empty
// dictionaries and timestamps now.
func NewBlueprint(name, description, createdBy string, architecture map[string]any) Blueprint {
	now := Now()
	return Blueprint{BlueprintID: newUUID(), Name: name, Description: description, State: BlueprintProposed,
		Architecture: architecture, Hyperparameters: map[string]any{}, PerformanceMetrics: Metrics{},
		CreatedAt: now, UpdatedAt: now, CreatedBy: createdBy}
}

// StateDisplay is the state title-cased ("Characterized").
func (b Blueprint) StateDisplay() string { return title(string(b.State)) }

// IsReadyForDeployment reports a characterized blueprint.
func (b Blueprint) IsReadyForDeployment() bool { return b.State == BlueprintCharacterized }

// GetPerformanceSummary lists the metrics in order with three decimals
// ("Performance: loss: 0.123, acc: 0.900"), or "No metrics available".
func (b Blueprint) GetPerformanceSummary() string {
	if len(b.PerformanceMetrics) == 0 {
		return "No metrics available"
	}
	out := []byte("Performance: ")
	for i, m := range b.PerformanceMetrics {
		if i > 0 {
			out = append(out, ", "...)
		}
		out = append(out, m.Name...)
		out = append(out, ": "...)
		out = appendPyFixed3(out, m.Value)
	}
	return string(out)
}

// appendPyFixed3 formats like Python's f"{v:.3f}".
func appendPyFixed3(dst []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(dst, "nan"...)
	case math.IsInf(v, 1):
		return append(dst, "inf"...)
	case math.IsInf(v, -1):
		return append(dst, "-inf"...)
	}
	return strconv.AppendFloat(dst, v, 'f', 3, 64)
}

// Transition moves the blueprint to state to at time now, refusing any
// change the state machine does not allow with an error wrapping
// ErrIllegalTransition.
func (b *Blueprint) Transition(to BlueprintState, now time.Time) error {
	if !b.State.CanTransitionTo(to) {
		return &TransitionError{Machine: "blueprint " + b.BlueprintID, From: string(b.State), To: string(to)}
	}
	b.State = to
	b.UpdatedAt = now
	return nil
}

// Compilation targets named by the contract.
const (
	CompilationTorchScript = "torchscript"
	CompilationPickle      = "pickle"
)

// NewKernelMetadata returns metadata holding the reference's defaults:
// compilation_target "torchscript", compatibility_version "1.0", empty
// collections, created_at now.
func NewKernelMetadata(kernelID, blueprintID, name string) KernelMetadata {
	return KernelMetadata{KernelID: kernelID, BlueprintID: blueprintID, Name: name,
		InputShape: []int{}, OutputShape: []int{}, DeviceRequirements: []string{},
		CompilationTarget:  CompilationTorchScript,
		PerformanceProfile: Metrics{}, CompatibilityVersion: "1.0", CreatedAt: Now()}
}

// IsCompatibleWithShape reports whether shape has the kernel's rank and
// matches every dimension but the first (the flexible batch dimension).
func (k KernelMetadata) IsCompatibleWithShape(shape []int) bool {
	if len(shape) != len(k.InputShape) {
		return false
	}
	for i := 1; i < len(shape); i++ {
		if shape[i] != k.InputShape[i] {
			return false
		}
	}
	return true
}

// GetMemoryEstimate scales the footprint linearly from a baseline batch
// of 32.
func (k KernelMetadata) GetMemoryEstimate(batchSize int) float64 {
	return k.MemoryFootprintMB * (float64(batchSize) / 32.0)
}

// Compiled kernel statuses accepted by CompiledKernel.Status.
const (
	KernelCompiled   = "compiled"
	KernelValidated  = "validated"
	KernelDeployed   = "deployed"
	KernelDeprecated = "deprecated"
)

// NewCompiledKernel returns a kernel holding the reference's defaults: a
// fresh UUID, status "compiled", empty collections, created_at now.
func NewCompiledKernel(blueprintID, binaryRef string, metadata KernelMetadata) CompiledKernel {
	return CompiledKernel{KernelID: newUUID(), BlueprintID: blueprintID, BinaryRef: binaryRef,
		Metadata: metadata, Status: KernelCompiled,
		DeploymentStats: Metrics{}, CreatedAt: Now()}
}

// IsReadyForDeployment reports a validated or deployed kernel.
func (c CompiledKernel) IsReadyForDeployment() bool {
	return c.Status == KernelValidated || c.Status == KernelDeployed
}

// UpdateUsageStats records a use now.
func (c *CompiledKernel) UpdateUsageStats() {
	now := Now()
	c.LastUsedAt = &now
}

// Training session statuses accepted by TrainingSession.Status.
const (
	SessionInitialized = "initialized"
	SessionRunning     = "running"
	SessionPaused      = "paused"
	SessionCompleted   = "completed"
	SessionFailed      = "failed"
)

// GetActiveSeedCount counts the seeds in training or grafting.
func (t TrainingSession) GetActiveSeedCount() int {
	n := 0
	for _, s := range t.Seeds {
		if s.IsActive() {
			n++
		}
	}
	return n
}

// GetSessionSummary is the reference's one-line summary.
func (t TrainingSession) GetSessionSummary() string {
	return fmt.Sprintf("Session '%s': %d seeds (%d active), %d blueprints, status: %s",
		t.Name, len(t.Seeds), t.GetActiveSeedCount(), len(t.Blueprints), t.Status)
}

// decodeList decodes a JSON array of nested models; it reports false if
// any element had errors.
func decodeList[T any](d *decoder, path string, dec func(*decoder, string) T) ([]T, bool) {
	if d.peek() != '[' {
		d.typeError(path, "input should be a valid list")
		return nil, false
	}
	d.pos++
	out := []T{}
	n := len(d.errs.fields)
	first := true
	for i := 0; d.nextElem(&first); i++ {
		v := dec(d, join(path, strconv.Itoa(i)))
		if d.syn != nil {
			return nil, false
		}
		out = append(out, v)
	}
	return out, d.syn == nil && len(d.errs.fields) == n
}
