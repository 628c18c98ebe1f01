package contracts

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// marks tracks which fields a decode saw and which failed to parse.
type marks struct{ seen, bad uint32 }

func (m *marks) mark(i int, good bool) {
	m.seen |= 1 << i
	if good {
		m.bad &^= 1 << i
	} else {
		m.bad |= 1 << i
	}
}

// require records a missing error for each absent required field.
func (m *marks) require(d *decoder, p string, fields ...fieldName) {
	for _, f := range fields {
		if !has(m.seen, f.i) {
			d.missing(p, f.name)
			m.bad |= 1 << f.i
		}
	}
}

type fieldName struct {
	i    int
	name string
}

func newUUID() string { return uuid.NewString() }

// Seed is a morphogenetic seed embedded in a neural network layer.
type Seed struct {
	SeedID      string         `json:"seed_id"`
	LayerID     int            `json:"layer_id"`
	Position    int            `json:"position"`
	State       SeedState      `json:"state"`
	BlueprintID *string        `json:"blueprint_id"`
	CreatedAt   time.Time      `json:"created_at"`
	UpdatedAt   time.Time      `json:"updated_at"`
	Metadata    map[string]any `json:"metadata"`
}

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

const (
	sdSeedID = iota
	sdLayerID
	sdPosition
	sdState
	sdBlueprintID
	sdCreatedAt
	sdUpdatedAt
	sdMetadata
)

// Validate checks every constraint of the contract.
func (s Seed) Validate() error {
	errs := fieldErrors{model: "Seed"}
	s.check(&errs, "", 0)
	return errs.err()
}

func (s *Seed) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, sdLayerID) {
		geI(errs, p, "layer_id", s.LayerID, 0)
	}
	if !has(bad, sdPosition) {
		geI(errs, p, "position", s.Position, 0)
	}
	if !has(bad, sdState) && !s.State.Valid() {
		errs.add(join(p, "state"), enumReason(string(s.State), seedStateNames))
	}
	if !has(bad, sdCreatedAt) {
		checkTime(errs, p, "created_at", s.CreatedAt)
	}
	if !has(bad, sdUpdatedAt) {
		checkTime(errs, p, "updated_at", s.UpdatedAt)
	}
	if !has(bad, sdMetadata) {
		checkAnyMap(errs, p, "metadata", s.Metadata)
	}
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

// DecodeSeed decodes and validates one Seed.
func DecodeSeed(data []byte) (Seed, error) {
	var s Seed
	d := newDecoder("Seed", data)
	s.decode(&d, "")
	return s, d.finish()
}

// UnmarshalJSON decodes and validates; on error s is left unchanged.
func (s *Seed) UnmarshalJSON(data []byte) error {
	v, err := DecodeSeed(data)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalJSON encodes s in the reference's field order.
func (s Seed) MarshalJSON() ([]byte, error) { return s.AppendJSON(nil), nil }

func (s *Seed) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(k) {
		case "seed_id":
			s.SeedID, good = d.str(p, "seed_id")
			m.mark(sdSeedID, good)
		case "layer_id":
			s.LayerID, good = d.int(p, "layer_id")
			m.mark(sdLayerID, good)
		case "position":
			s.Position, good = d.int(p, "position")
			m.mark(sdPosition, good)
		case "state":
			var st string
			st, good = d.enum(p, "state", seedStateNames)
			s.State = SeedState(st)
			m.mark(sdState, good)
		case "blueprint_id":
			s.BlueprintID, good = d.optStr(p, "blueprint_id")
			m.mark(sdBlueprintID, good)
		case "created_at":
			s.CreatedAt, good = d.timestamp(p, "created_at")
			m.mark(sdCreatedAt, good)
		case "updated_at":
			s.UpdatedAt, good = d.timestamp(p, "updated_at")
			m.mark(sdUpdatedAt, good)
		case "metadata":
			s.Metadata, good = d.anyMap(p, "metadata", false)
			m.mark(sdMetadata, good)
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{sdLayerID, "layer_id"}, fieldName{sdPosition, "position"})
	if !has(m.seen, sdSeedID) {
		s.SeedID = newUUID()
	}
	if !has(m.seen, sdState) {
		s.State = SeedDormant
	}
	if !has(m.seen, sdCreatedAt) || !has(m.seen, sdUpdatedAt) {
		now := Now()
		if !has(m.seen, sdCreatedAt) {
			s.CreatedAt = now
		}
		if !has(m.seen, sdUpdatedAt) {
			s.UpdatedAt = now
		}
	}
	if !has(m.seen, sdMetadata) {
		s.Metadata = map[string]any{}
	}
	s.check(&d.errs, p, m.bad|1<<sdMetadata)
}

// AppendJSON appends s's JSON encoding to dst.
func (s Seed) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"seed_id":`...)
	dst = appendString(dst, s.SeedID)
	dst = append(dst, `,"layer_id":`...)
	dst = appendInt(dst, s.LayerID)
	dst = append(dst, `,"position":`...)
	dst = appendInt(dst, s.Position)
	dst = append(dst, `,"state":`...)
	dst = appendString(dst, string(s.State))
	dst = append(dst, `,"blueprint_id":`...)
	dst = appendOptString(dst, s.BlueprintID)
	dst = append(dst, `,"created_at":`...)
	dst = appendTimestamp(dst, s.CreatedAt)
	dst = append(dst, `,"updated_at":`...)
	dst = appendTimestamp(dst, s.UpdatedAt)
	dst = append(dst, `,"metadata":`...)
	dst = appendAnyMap(dst, s.Metadata)
	return append(dst, '}')
}

// Blueprint is an architectural blueprint for a network component. Its
// strings (and its dictionaries' keys) are stripped of surrounding white
// space on decode.
type Blueprint struct {
	BlueprintID        string         `json:"blueprint_id"`
	Name               string         `json:"name"`
	Description        string         `json:"description"`
	State              BlueprintState `json:"state"`
	Architecture       map[string]any `json:"architecture"`
	Hyperparameters    map[string]any `json:"hyperparameters"`
	PerformanceMetrics Metrics        `json:"performance_metrics"`
	CreatedAt          time.Time      `json:"created_at"`
	UpdatedAt          time.Time      `json:"updated_at"`
	CreatedBy          string         `json:"created_by"`
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

const (
	bpBlueprintID = iota
	bpName
	bpDescription
	bpState
	bpArchitecture
	bpHyperparameters
	bpPerformanceMetrics
	bpCreatedAt
	bpUpdatedAt
	bpCreatedBy
)

// Validate checks every constraint; lengths apply to the stripped strings.
func (b Blueprint) Validate() error {
	errs := fieldErrors{model: "Blueprint"}
	b.check(&errs, "", 0)
	return errs.err()
}

func (b *Blueprint) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, bpName) {
		strLen(errs, p, "name", strip(b.Name), 1, 255)
	}
	if !has(bad, bpDescription) {
		strLen(errs, p, "description", strip(b.Description), 1, 1000)
	}
	if !has(bad, bpState) && !b.State.Valid() {
		errs.add(join(p, "state"), enumReason(string(b.State), blueprintStateNames))
	}
	if !has(bad, bpArchitecture) {
		if b.Architecture == nil {
			errs.add(join(p, "architecture"), "input should be a valid dictionary, got nil")
		}
		checkAnyMap(errs, p, "architecture", b.Architecture)
	}
	if !has(bad, bpHyperparameters) {
		checkAnyMap(errs, p, "hyperparameters", b.Hyperparameters)
	}
	if !has(bad, bpPerformanceMetrics) {
		checkMetrics(errs, p, "performance_metrics", b.PerformanceMetrics)
	}
	if !has(bad, bpCreatedAt) {
		checkTime(errs, p, "created_at", b.CreatedAt)
	}
	if !has(bad, bpUpdatedAt) {
		checkTime(errs, p, "updated_at", b.UpdatedAt)
	}
	if !has(bad, bpCreatedBy) {
		strLen(errs, p, "created_by", strip(b.CreatedBy), 1, 100)
	}
}

// DecodeBlueprint decodes and validates one Blueprint.
func DecodeBlueprint(data []byte) (Blueprint, error) {
	var b Blueprint
	d := newDecoder("Blueprint", data)
	b.decode(&d, "")
	return b, d.finish()
}

// UnmarshalJSON decodes and validates; on error b is left unchanged.
func (b *Blueprint) UnmarshalJSON(data []byte) error {
	v, err := DecodeBlueprint(data)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalJSON encodes b in the reference's field order.
func (b Blueprint) MarshalJSON() ([]byte, error) { return b.AppendJSON(nil), nil }

func (b *Blueprint) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(k) {
		case "blueprint_id":
			b.BlueprintID, good = d.str(p, "blueprint_id")
			b.BlueprintID = strip(b.BlueprintID)
			m.mark(bpBlueprintID, good)
		case "name":
			b.Name, good = d.str(p, "name")
			b.Name = strip(b.Name)
			m.mark(bpName, good)
		case "description":
			b.Description, good = d.str(p, "description")
			b.Description = strip(b.Description)
			m.mark(bpDescription, good)
		case "state":
			var st string
			st, good = d.enum(p, "state", blueprintStateNames)
			b.State = BlueprintState(st)
			m.mark(bpState, good)
		case "architecture":
			b.Architecture, good = d.anyMap(p, "architecture", true)
			m.mark(bpArchitecture, good)
		case "hyperparameters":
			b.Hyperparameters, good = d.anyMap(p, "hyperparameters", true)
			m.mark(bpHyperparameters, good)
		case "performance_metrics":
			b.PerformanceMetrics, good = d.metrics(p, "performance_metrics", true)
			m.mark(bpPerformanceMetrics, good)
		case "created_at":
			b.CreatedAt, good = d.timestamp(p, "created_at")
			m.mark(bpCreatedAt, good)
		case "updated_at":
			b.UpdatedAt, good = d.timestamp(p, "updated_at")
			m.mark(bpUpdatedAt, good)
		case "created_by":
			b.CreatedBy, good = d.str(p, "created_by")
			b.CreatedBy = strip(b.CreatedBy)
			m.mark(bpCreatedBy, good)
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{bpName, "name"}, fieldName{bpDescription, "description"},
		fieldName{bpArchitecture, "architecture"}, fieldName{bpCreatedBy, "created_by"})
	if !has(m.seen, bpBlueprintID) {
		b.BlueprintID = newUUID()
	}
	if !has(m.seen, bpState) {
		b.State = BlueprintProposed
	}
	if !has(m.seen, bpHyperparameters) {
		b.Hyperparameters = map[string]any{}
	}
	if !has(m.seen, bpPerformanceMetrics) {
		b.PerformanceMetrics = Metrics{}
	}
	if !has(m.seen, bpCreatedAt) || !has(m.seen, bpUpdatedAt) {
		now := Now()
		if !has(m.seen, bpCreatedAt) {
			b.CreatedAt = now
		}
		if !has(m.seen, bpUpdatedAt) {
			b.UpdatedAt = now
		}
	}
	b.check(&d.errs, p, m.bad|1<<bpArchitecture|1<<bpHyperparameters|1<<bpPerformanceMetrics)
}

// AppendJSON appends b's JSON encoding to dst.
func (b Blueprint) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"blueprint_id":`...)
	dst = appendString(dst, b.BlueprintID)
	dst = append(dst, `,"name":`...)
	dst = appendString(dst, b.Name)
	dst = append(dst, `,"description":`...)
	dst = appendString(dst, b.Description)
	dst = append(dst, `,"state":`...)
	dst = appendString(dst, string(b.State))
	dst = append(dst, `,"architecture":`...)
	dst = appendAnyMap(dst, b.Architecture)
	dst = append(dst, `,"hyperparameters":`...)
	dst = appendAnyMap(dst, b.Hyperparameters)
	dst = append(dst, `,"performance_metrics":`...)
	dst = appendMetrics(dst, b.PerformanceMetrics)
	dst = append(dst, `,"created_at":`...)
	dst = appendTimestamp(dst, b.CreatedAt)
	dst = append(dst, `,"updated_at":`...)
	dst = appendTimestamp(dst, b.UpdatedAt)
	dst = append(dst, `,"created_by":`...)
	dst = appendString(dst, b.CreatedBy)
	return append(dst, '}')
}

// Compilation targets named by the contract.
const (
	CompilationTorchScript = "torchscript"
	CompilationPickle      = "pickle"
)

// KernelMetadata describes a compiled kernel artifact. Its strings are
// kept exactly as given (the reference does not strip them).
type KernelMetadata struct {
	KernelID             string    `json:"kernel_id"`
	BlueprintID          string    `json:"blueprint_id"`
	Name                 string    `json:"name"`
	InputShape           []int     `json:"input_shape"`
	OutputShape          []int     `json:"output_shape"`
	ParameterCount       int       `json:"parameter_count"`
	DeviceRequirements   []string  `json:"device_requirements"`
	MemoryFootprintMB    float64   `json:"memory_footprint_mb"`
	CompilationTarget    string    `json:"compilation_target"`
	OptimizationFlags    Object    `json:"optimization_flags"`
	PerformanceProfile   Metrics   `json:"performance_profile"`
	CompatibilityVersion string    `json:"compatibility_version"`
	CreatedAt            time.Time `json:"created_at"`
	Checksum             *string   `json:"checksum"` // SHA-256 of the kernel binary
}

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

const (
	kmKernelID = iota
	kmBlueprintID
	kmName
	kmInputShape
	kmOutputShape
	kmParameterCount
	kmDeviceRequirements
	kmMemoryFootprintMB
	kmCompilationTarget
	kmOptimizationFlags
	kmPerformanceProfile
	kmCompatibilityVersion
	kmCreatedAt
	kmChecksum
)

// Validate checks every constraint of the contract.
func (k KernelMetadata) Validate() error {
	errs := fieldErrors{model: "KernelMetadata"}
	k.check(&errs, "", 0)
	return errs.err()
}

func (k *KernelMetadata) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, kmName) {
		strLen(errs, p, "name", k.Name, 1, 255)
	}
	if !has(bad, kmInputShape) && k.InputShape == nil {
		errs.add(join(p, "input_shape"), "input should be a valid list, got nil")
	}
	if !has(bad, kmOutputShape) && k.OutputShape == nil {
		errs.add(join(p, "output_shape"), "input should be a valid list, got nil")
	}
	if !has(bad, kmParameterCount) {
		geI(errs, p, "parameter_count", k.ParameterCount, 0)
	}
	if !has(bad, kmMemoryFootprintMB) {
		geF(errs, p, "memory_footprint_mb", k.MemoryFootprintMB, 0)
	}
	if !has(bad, kmOptimizationFlags) {
		k.OptimizationFlags.check(errs, p, "optimization_flags")
	}
	if !has(bad, kmPerformanceProfile) {
		checkMetrics(errs, p, "performance_profile", k.PerformanceProfile)
	}
	if !has(bad, kmCreatedAt) {
		checkTime(errs, p, "created_at", k.CreatedAt)
	}
}

// DecodeKernelMetadata decodes and validates one KernelMetadata.
func DecodeKernelMetadata(data []byte) (KernelMetadata, error) {
	var k KernelMetadata
	d := newDecoder("KernelMetadata", data)
	k.decode(&d, "")
	return k, d.finish()
}

// UnmarshalJSON decodes and validates; on error k is left unchanged.
func (k *KernelMetadata) UnmarshalJSON(data []byte) error {
	v, err := DecodeKernelMetadata(data)
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// MarshalJSON encodes k in the reference's field order.
func (k KernelMetadata) MarshalJSON() ([]byte, error) { return k.AppendJSON(nil), nil }

func (k *KernelMetadata) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		key, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(key) {
		case "kernel_id":
			k.KernelID, good = d.str(p, "kernel_id")
			m.mark(kmKernelID, good)
		case "blueprint_id":
			k.BlueprintID, good = d.str(p, "blueprint_id")
			m.mark(kmBlueprintID, good)
		case "name":
			k.Name, good = d.str(p, "name")
			m.mark(kmName, good)
		case "input_shape":
			k.InputShape, good = d.intList(p, "input_shape")
			m.mark(kmInputShape, good)
		case "output_shape":
			k.OutputShape, good = d.intList(p, "output_shape")
			m.mark(kmOutputShape, good)
		case "parameter_count":
			k.ParameterCount, good = d.int(p, "parameter_count")
			m.mark(kmParameterCount, good)
		case "device_requirements":
			k.DeviceRequirements, good = d.stringList(p, "device_requirements")
			m.mark(kmDeviceRequirements, good)
		case "memory_footprint_mb":
			k.MemoryFootprintMB, good = d.float(p, "memory_footprint_mb")
			m.mark(kmMemoryFootprintMB, good)
		case "compilation_target":
			k.CompilationTarget, good = d.str(p, "compilation_target")
			m.mark(kmCompilationTarget, good)
		case "optimization_flags":
			k.OptimizationFlags, good = d.object(p, "optimization_flags")
			m.mark(kmOptimizationFlags, good)
		case "performance_profile":
			k.PerformanceProfile, good = d.metrics(p, "performance_profile", false)
			m.mark(kmPerformanceProfile, good)
		case "compatibility_version":
			k.CompatibilityVersion, good = d.str(p, "compatibility_version")
			m.mark(kmCompatibilityVersion, good)
		case "created_at":
			k.CreatedAt, good = d.timestamp(p, "created_at")
			m.mark(kmCreatedAt, good)
		case "checksum":
			k.Checksum, good = d.optStr(p, "checksum")
			m.mark(kmChecksum, good)
		default:
			d.extra(p, key)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{kmKernelID, "kernel_id"}, fieldName{kmBlueprintID, "blueprint_id"},
		fieldName{kmName, "name"}, fieldName{kmInputShape, "input_shape"}, fieldName{kmOutputShape, "output_shape"},
		fieldName{kmParameterCount, "parameter_count"}, fieldName{kmMemoryFootprintMB, "memory_footprint_mb"})
	if !has(m.seen, kmDeviceRequirements) {
		k.DeviceRequirements = []string{}
	}
	if !has(m.seen, kmCompilationTarget) {
		k.CompilationTarget = CompilationTorchScript
	}
	if !has(m.seen, kmPerformanceProfile) {
		k.PerformanceProfile = Metrics{}
	}
	if !has(m.seen, kmCompatibilityVersion) {
		k.CompatibilityVersion = "1.0"
	}
	if !has(m.seen, kmCreatedAt) {
		k.CreatedAt = Now()
	}
	k.check(&d.errs, p, m.bad|1<<kmOptimizationFlags|1<<kmPerformanceProfile)
}

// AppendJSON appends k's JSON encoding to dst.
func (k KernelMetadata) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"kernel_id":`...)
	dst = appendString(dst, k.KernelID)
	dst = append(dst, `,"blueprint_id":`...)
	dst = appendString(dst, k.BlueprintID)
	dst = append(dst, `,"name":`...)
	dst = appendString(dst, k.Name)
	dst = append(dst, `,"input_shape":`...)
	dst = appendIntList(dst, k.InputShape)
	dst = append(dst, `,"output_shape":`...)
	dst = appendIntList(dst, k.OutputShape)
	dst = append(dst, `,"parameter_count":`...)
	dst = appendInt(dst, k.ParameterCount)
	dst = append(dst, `,"device_requirements":`...)
	dst = appendStringList(dst, k.DeviceRequirements)
	dst = append(dst, `,"memory_footprint_mb":`...)
	dst = appendFloat(dst, k.MemoryFootprintMB)
	dst = append(dst, `,"compilation_target":`...)
	dst = appendString(dst, k.CompilationTarget)
	dst = append(dst, `,"optimization_flags":`...)
	dst = k.OptimizationFlags.AppendJSON(dst)
	dst = append(dst, `,"performance_profile":`...)
	dst = appendMetrics(dst, k.PerformanceProfile)
	dst = append(dst, `,"compatibility_version":`...)
	dst = appendString(dst, k.CompatibilityVersion)
	dst = append(dst, `,"created_at":`...)
	dst = appendTimestamp(dst, k.CreatedAt)
	dst = append(dst, `,"checksum":`...)
	dst = appendOptString(dst, k.Checksum)
	return append(dst, '}')
}

// Compiled kernel statuses accepted by CompiledKernel.Status.
const (
	KernelCompiled   = "compiled"
	KernelValidated  = "validated"
	KernelDeployed   = "deployed"
	KernelDeprecated = "deprecated"
)

// CompiledKernel is a compiled kernel artifact ready for execution.
type CompiledKernel struct {
	KernelID          string         `json:"kernel_id"`
	BlueprintID       string         `json:"blueprint_id"`
	BinaryRef         string         `json:"binary_ref"` // S3 reference to the binary
	Metadata          KernelMetadata `json:"metadata"`
	Status            string         `json:"status"`
	ValidationResults Object         `json:"validation_results"`
	DeploymentStats   Metrics        `json:"deployment_stats"`
	CreatedAt         time.Time      `json:"created_at"`
	LastUsedAt        *time.Time     `json:"last_used_at"`
}

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

const (
	ckKernelID = iota
	ckBlueprintID
	ckBinaryRef
	ckMetadata
	ckStatus
	ckValidationResults
	ckDeploymentStats
	ckCreatedAt
	ckLastUsedAt
)

// Validate checks every constraint, the metadata's included.
func (c CompiledKernel) Validate() error {
	errs := fieldErrors{model: "CompiledKernel"}
	c.check(&errs, "", 0)
	return errs.err()
}

func (c *CompiledKernel) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, ckMetadata) {
		c.Metadata.check(errs, join(p, "metadata"), 0)
	}
	if !has(bad, ckStatus) {
		oneOf(errs, p, "status", c.Status, KernelCompiled, KernelValidated, KernelDeployed, KernelDeprecated)
	}
	if !has(bad, ckValidationResults) {
		c.ValidationResults.check(errs, p, "validation_results")
	}
	if !has(bad, ckDeploymentStats) {
		checkMetrics(errs, p, "deployment_stats", c.DeploymentStats)
	}
	if !has(bad, ckCreatedAt) {
		checkTime(errs, p, "created_at", c.CreatedAt)
	}
	if !has(bad, ckLastUsedAt) && c.LastUsedAt != nil {
		checkTime(errs, p, "last_used_at", *c.LastUsedAt)
	}
}

// DecodeCompiledKernel decodes and validates one CompiledKernel in a
// single pass.
func DecodeCompiledKernel(data []byte) (CompiledKernel, error) {
	var c CompiledKernel
	d := newDecoder("CompiledKernel", data)
	c.decode(&d, "")
	return c, d.finish()
}

// UnmarshalJSON decodes and validates; on error c is left unchanged.
func (c *CompiledKernel) UnmarshalJSON(data []byte) error {
	v, err := DecodeCompiledKernel(data)
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// MarshalJSON encodes c in the reference's field order.
func (c CompiledKernel) MarshalJSON() ([]byte, error) { return c.AppendJSON(nil), nil }

func (c *CompiledKernel) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(k) {
		case "kernel_id":
			c.KernelID, good = d.str(p, "kernel_id")
			m.mark(ckKernelID, good)
		case "blueprint_id":
			c.BlueprintID, good = d.str(p, "blueprint_id")
			m.mark(ckBlueprintID, good)
		case "binary_ref":
			c.BinaryRef, good = d.str(p, "binary_ref")
			m.mark(ckBinaryRef, good)
		case "metadata":
			n := len(d.errs.fields)
			c.Metadata = KernelMetadata{}
			c.Metadata.decode(d, join(p, "metadata"))
			m.mark(ckMetadata, len(d.errs.fields) == n)
		case "status":
			c.Status, good = d.str(p, "status")
			m.mark(ckStatus, good)
		case "validation_results":
			c.ValidationResults, good = d.object(p, "validation_results")
			m.mark(ckValidationResults, good)
		case "deployment_stats":
			c.DeploymentStats, good = d.metrics(p, "deployment_stats", false)
			m.mark(ckDeploymentStats, good)
		case "created_at":
			c.CreatedAt, good = d.timestamp(p, "created_at")
			m.mark(ckCreatedAt, good)
		case "last_used_at":
			c.LastUsedAt, good = d.optTimestamp(p, "last_used_at")
			m.mark(ckLastUsedAt, good)
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{ckBlueprintID, "blueprint_id"}, fieldName{ckBinaryRef, "binary_ref"},
		fieldName{ckMetadata, "metadata"})
	if !has(m.seen, ckKernelID) {
		c.KernelID = newUUID()
	}
	if !has(m.seen, ckStatus) {
		c.Status = KernelCompiled
	}
	if !has(m.seen, ckDeploymentStats) {
		c.DeploymentStats = Metrics{}
	}
	if !has(m.seen, ckCreatedAt) {
		c.CreatedAt = Now()
	}
	// The metadata checked itself while decoding.
	c.check(&d.errs, p, m.bad|1<<ckMetadata|1<<ckValidationResults|1<<ckDeploymentStats)
}

// AppendJSON appends c's JSON encoding to dst.
func (c CompiledKernel) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"kernel_id":`...)
	dst = appendString(dst, c.KernelID)
	dst = append(dst, `,"blueprint_id":`...)
	dst = appendString(dst, c.BlueprintID)
	dst = append(dst, `,"binary_ref":`...)
	dst = appendString(dst, c.BinaryRef)
	dst = append(dst, `,"metadata":`...)
	dst = c.Metadata.AppendJSON(dst)
	dst = append(dst, `,"status":`...)
	dst = appendString(dst, c.Status)
	dst = append(dst, `,"validation_results":`...)
	dst = c.ValidationResults.AppendJSON(dst)
	dst = append(dst, `,"deployment_stats":`...)
	dst = appendMetrics(dst, c.DeploymentStats)
	dst = append(dst, `,"created_at":`...)
	dst = appendTimestamp(dst, c.CreatedAt)
	dst = append(dst, `,"last_used_at":`...)
	if c.LastUsedAt == nil {
		dst = append(dst, "null"...)
	} else {
		dst = appendTimestamp(dst, *c.LastUsedAt)
	}
	return append(dst, '}')
}

// Training session statuses accepted by TrainingSession.Status.
const (
	SessionInitialized = "initialized"
	SessionRunning     = "running"
	SessionPaused      = "paused"
	SessionCompleted   = "completed"
	SessionFailed      = "failed"
)

// TrainingSession is a training session of a morphogenetic system. Its
// strings (and its dictionaries' keys) are stripped on decode.
type TrainingSession struct {
	SessionID           string         `json:"session_id"`
	Name                string         `json:"name"`
	Description         string         `json:"description"`
	TrainingModelConfig map[string]any `json:"training_model_config"`
	TrainingConfig      map[string]any `json:"training_config"`
	Seeds               []Seed         `json:"seeds"`
	Blueprints          []Blueprint    `json:"blueprints"`
	Status              string         `json:"status"`
	CreatedAt           time.Time      `json:"created_at"`
	UpdatedAt           time.Time      `json:"updated_at"`
}

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

const (
	tsSessionID = iota
	tsName
	tsDescription
	tsTrainingModelConfig
	tsTrainingConfig
	tsSeeds
	tsBlueprints
	tsStatus
	tsCreatedAt
	tsUpdatedAt
)

// Validate checks every constraint, the nested seeds' and blueprints'
// included.
func (t TrainingSession) Validate() error {
	errs := fieldErrors{model: "TrainingSession"}
	t.check(&errs, "", 0)
	return errs.err()
}

func (t *TrainingSession) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, tsName) {
		strLen(errs, p, "name", strip(t.Name), 1, 255)
	}
	if !has(bad, tsDescription) {
		strLen(errs, p, "description", strip(t.Description), 1, 1000)
	}
	if !has(bad, tsTrainingModelConfig) {
		if t.TrainingModelConfig == nil {
			errs.add(join(p, "training_model_config"), "input should be a valid dictionary, got nil")
		}
		checkAnyMap(errs, p, "training_model_config", t.TrainingModelConfig)
	}
	if !has(bad, tsTrainingConfig) {
		if t.TrainingConfig == nil {
			errs.add(join(p, "training_config"), "input should be a valid dictionary, got nil")
		}
		checkAnyMap(errs, p, "training_config", t.TrainingConfig)
	}
	if !has(bad, tsSeeds) {
		for i := range t.Seeds {
			t.Seeds[i].check(errs, join(p, "seeds."+strconv.Itoa(i)), 0)
		}
	}
	if !has(bad, tsBlueprints) {
		for i := range t.Blueprints {
			t.Blueprints[i].check(errs, join(p, "blueprints."+strconv.Itoa(i)), 0)
		}
	}
	if !has(bad, tsStatus) {
		oneOf(errs, p, "status", strip(t.Status), SessionInitialized, SessionRunning, SessionPaused,
			SessionCompleted, SessionFailed)
	}
	if !has(bad, tsCreatedAt) {
		checkTime(errs, p, "created_at", t.CreatedAt)
	}
	if !has(bad, tsUpdatedAt) {
		checkTime(errs, p, "updated_at", t.UpdatedAt)
	}
}

// DecodeTrainingSession decodes and validates one TrainingSession.
func DecodeTrainingSession(data []byte) (TrainingSession, error) {
	var t TrainingSession
	d := newDecoder("TrainingSession", data)
	t.decode(&d, "")
	return t, d.finish()
}

// UnmarshalJSON decodes and validates; on error t is left unchanged.
func (t *TrainingSession) UnmarshalJSON(data []byte) error {
	v, err := DecodeTrainingSession(data)
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// MarshalJSON encodes t in the reference's field order.
func (t TrainingSession) MarshalJSON() ([]byte, error) { return t.AppendJSON(nil), nil }

func (t *TrainingSession) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(k) {
		case "session_id":
			t.SessionID, good = d.str(p, "session_id")
			t.SessionID = strip(t.SessionID)
			m.mark(tsSessionID, good)
		case "name":
			t.Name, good = d.str(p, "name")
			t.Name = strip(t.Name)
			m.mark(tsName, good)
		case "description":
			t.Description, good = d.str(p, "description")
			t.Description = strip(t.Description)
			m.mark(tsDescription, good)
		case "training_model_config":
			t.TrainingModelConfig, good = d.anyMap(p, "training_model_config", true)
			m.mark(tsTrainingModelConfig, good)
		case "training_config":
			t.TrainingConfig, good = d.anyMap(p, "training_config", true)
			m.mark(tsTrainingConfig, good)
		case "seeds":
			t.Seeds, good = decodeList(d, join(p, "seeds"), (*Seed).decode)
			m.mark(tsSeeds, good)
		case "blueprints":
			t.Blueprints, good = decodeList(d, join(p, "blueprints"), (*Blueprint).decode)
			m.mark(tsBlueprints, good)
		case "status":
			t.Status, good = d.str(p, "status")
			t.Status = strip(t.Status)
			m.mark(tsStatus, good)
		case "created_at":
			t.CreatedAt, good = d.timestamp(p, "created_at")
			m.mark(tsCreatedAt, good)
		case "updated_at":
			t.UpdatedAt, good = d.timestamp(p, "updated_at")
			m.mark(tsUpdatedAt, good)
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{tsName, "name"}, fieldName{tsDescription, "description"},
		fieldName{tsTrainingModelConfig, "training_model_config"}, fieldName{tsTrainingConfig, "training_config"})
	if !has(m.seen, tsSessionID) {
		t.SessionID = newUUID()
	}
	if !has(m.seen, tsSeeds) {
		t.Seeds = []Seed{}
	}
	if !has(m.seen, tsBlueprints) {
		t.Blueprints = []Blueprint{}
	}
	if !has(m.seen, tsStatus) {
		t.Status = SessionInitialized
	}
	if !has(m.seen, tsCreatedAt) || !has(m.seen, tsUpdatedAt) {
		now := Now()
		if !has(m.seen, tsCreatedAt) {
			t.CreatedAt = now
		}
		if !has(m.seen, tsUpdatedAt) {
			t.UpdatedAt = now
		}
	}
	t.check(&d.errs, p, m.bad|1<<tsSeeds|1<<tsBlueprints|1<<tsTrainingModelConfig|1<<tsTrainingConfig)
}

// decodeList decodes a JSON array of nested models; it reports false if
// any element had errors.
func decodeList[T any](d *decoder, path string, dec func(*T, *decoder, string)) ([]T, bool) {
	if d.peek() != '[' {
		d.typeError(path, "input should be a valid list")
		return nil, false
	}
	d.pos++
	out := []T{}
	n := len(d.errs.fields)
	first := true
	for i := 0; d.nextElem(&first); i++ {
		var v T
		dec(&v, d, join(path, strconv.Itoa(i)))
		if d.syn != nil {
			return nil, false
		}
		out = append(out, v)
	}
	return out, d.syn == nil && len(d.errs.fields) == n
}

// AppendJSON appends t's JSON encoding to dst.
func (t TrainingSession) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"session_id":`...)
	dst = appendString(dst, t.SessionID)
	dst = append(dst, `,"name":`...)
	dst = appendString(dst, t.Name)
	dst = append(dst, `,"description":`...)
	dst = appendString(dst, t.Description)
	dst = append(dst, `,"training_model_config":`...)
	dst = appendAnyMap(dst, t.TrainingModelConfig)
	dst = append(dst, `,"training_config":`...)
	dst = appendAnyMap(dst, t.TrainingConfig)
	dst = append(dst, `,"seeds":[`...)
	for i, s := range t.Seeds {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = s.AppendJSON(dst)
	}
	dst = append(dst, `],"blueprints":[`...)
	for i, b := range t.Blueprints {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = b.AppendJSON(dst)
	}
	dst = append(dst, `],"status":`...)
	dst = appendString(dst, t.Status)
	dst = append(dst, `,"created_at":`...)
	dst = appendTimestamp(dst, t.CreatedAt)
	dst = append(dst, `,"updated_at":`...)
	dst = appendTimestamp(dst, t.UpdatedAt)
	return append(dst, '}')
}
