package contracts

import "fmt"

// APIVersion is the contracts version shared by every Esper service.
const APIVersion = "v1"

// SeedState is the lifecycle state of a morphogenetic seed.
type SeedState string

// The seed lifecycle states.
const (
	SeedDormant    SeedState = "dormant"
	SeedGerminated SeedState = "germinated"
	SeedTraining   SeedState = "training"
	SeedGrafting   SeedState = "grafting"
	SeedFossilized SeedState = "fossilized"
	SeedCulled     SeedState = "culled"
)

// SeedStates lists every SeedState in lifecycle order.
var SeedStates = []SeedState{SeedDormant, SeedGerminated, SeedTraining, SeedGrafting, SeedFossilized, SeedCulled}

// Valid reports whether s is one of the defined states.
func (s SeedState) Valid() bool {
	switch s {
	case SeedDormant, SeedGerminated, SeedTraining, SeedGrafting, SeedFossilized, SeedCulled:
		return true
	}
	return false
}

// Terminal reports whether no transition leaves s.
func (s SeedState) Terminal() bool { return s == SeedFossilized || s == SeedCulled }

// CanTransitionTo reports whether the seed state machine allows s → to (see
// the package documentation for the table).
func (s SeedState) CanTransitionTo(to SeedState) bool {
	if !s.Valid() || !to.Valid() || s.Terminal() {
		return false
	}
	if to == SeedCulled {
		return true
	}
	switch s {
	case SeedDormant:
		return to == SeedGerminated
	case SeedGerminated:
		return to == SeedTraining
	case SeedTraining:
		return to == SeedGrafting
	case SeedGrafting:
		return to == SeedFossilized
	}
	return false
}

// BlueprintState is the lifecycle state of an architectural blueprint.
type BlueprintState string

// The blueprint lifecycle states.
const (
	BlueprintProposed      BlueprintState = "proposed"
	BlueprintCompiling     BlueprintState = "compiling"
	BlueprintValidating    BlueprintState = "validating"
	BlueprintCharacterized BlueprintState = "characterized"
	BlueprintDeployed      BlueprintState = "deployed"
	BlueprintFailed        BlueprintState = "failed"
	BlueprintArchived      BlueprintState = "archived"
)

// BlueprintStates lists every BlueprintState in pipeline order.
var BlueprintStates = []BlueprintState{BlueprintProposed, BlueprintCompiling, BlueprintValidating,
	BlueprintCharacterized, BlueprintDeployed, BlueprintFailed, BlueprintArchived}

// Valid reports whether s is one of the defined states.
func (s BlueprintState) Valid() bool {
	switch s {
	case BlueprintProposed, BlueprintCompiling, BlueprintValidating, BlueprintCharacterized,
		BlueprintDeployed, BlueprintFailed, BlueprintArchived:
		return true
	}
	return false
}

// Terminal reports whether no transition leaves s.
func (s BlueprintState) Terminal() bool { return s == BlueprintArchived }

// CanTransitionTo reports whether the blueprint state machine allows
// s → to (see the package documentation for the table).
func (s BlueprintState) CanTransitionTo(to BlueprintState) bool {
	if !s.Valid() || !to.Valid() || s.Terminal() {
		return false
	}
	switch s {
	case BlueprintProposed:
		return to == BlueprintCompiling || to == BlueprintFailed || to == BlueprintArchived
	case BlueprintCompiling:
		return to == BlueprintValidating || to == BlueprintFailed || to == BlueprintArchived
	case BlueprintValidating:
		return to == BlueprintCharacterized || to == BlueprintFailed || to == BlueprintArchived
	case BlueprintCharacterized:
		return to == BlueprintDeployed || to == BlueprintFailed || to == BlueprintArchived
	case BlueprintDeployed:
		return to == BlueprintArchived
	case BlueprintFailed:
		return to == BlueprintArchived
	}
	return false
}

// TransitionError describes a refused state change; it wraps
// ErrIllegalTransition.
type TransitionError struct {
	Machine  string // "seed" or "blueprint"
	From, To string
}

// Error names the machine and both states.
func (e *TransitionError) Error() string {
	return fmt.Sprintf("%s: %s: %q → %q", e.Machine, ErrIllegalTransition, e.From, e.To)
}

// Unwrap returns ErrIllegalTransition.
func (e *TransitionError) Unwrap() error { return ErrIllegalTransition }

// SystemHealth is the overall health of the platform.
type SystemHealth string

// The system health levels.
const (
	SystemHealthy  SystemHealth = "healthy"
	SystemDegraded SystemHealth = "degraded"
	SystemCritical SystemHealth = "critical"
	SystemOffline  SystemHealth = "offline"
)

// Valid reports whether h is one of the defined levels.
func (h SystemHealth) Valid() bool {
	switch h {
	case SystemHealthy, SystemDegraded, SystemCritical, SystemOffline:
		return true
	}
	return false
}

// ComponentType names an Esper subsystem.
type ComponentType string

// The Esper subsystems.
const (
	ComponentTamiyo   ComponentType = "tamiyo"
	ComponentKarn     ComponentType = "karn"
	ComponentKasmina  ComponentType = "kasmina"
	ComponentTezzeret ComponentType = "tezzeret"
	ComponentUrabrask ComponentType = "urabrask"
	ComponentTolaria  ComponentType = "tolaria"
	ComponentUrza     ComponentType = "urza"
	ComponentOona     ComponentType = "oona"
	ComponentNissa    ComponentType = "nissa"
	ComponentSimic    ComponentType = "simic"
	ComponentEmrakul  ComponentType = "emrakul"
)

// Valid reports whether c is one of the defined components.
func (c ComponentType) Valid() bool {
	switch c {
	case ComponentTamiyo, ComponentKarn, ComponentKasmina, ComponentTezzeret, ComponentUrabrask,
		ComponentTolaria, ComponentUrza, ComponentOona, ComponentNissa, ComponentSimic, ComponentEmrakul:
		return true
	}
	return false
}

// BlueprintStatus is the compilation and validation status of a blueprint
// (Urza's records).
type BlueprintStatus string

// The blueprint statuses.
const (
	BlueprintStatusUnvalidated BlueprintStatus = "unvalidated"
	BlueprintStatusCompiling   BlueprintStatus = "compiling"
	BlueprintStatusValidated   BlueprintStatus = "validated"
	BlueprintStatusInvalid     BlueprintStatus = "invalid"
)

// Valid reports whether s is one of the defined statuses.
func (s BlueprintStatus) Valid() bool {
	switch s {
	case BlueprintStatusUnvalidated, BlueprintStatusCompiling, BlueprintStatusValidated, BlueprintStatusInvalid:
		return true
	}
	return false
}

// KernelStatus is the status of a compiled kernel artifact (Urza's records).
type KernelStatus string

// The kernel statuses.
const (
	KernelStatusValidated KernelStatus = "validated"
	KernelStatusInvalid   KernelStatus = "invalid"
	KernelStatusTesting   KernelStatus = "testing"
	KernelStatusDeployed  KernelStatus = "deployed"
)

// Valid reports whether s is one of the defined statuses.
func (s KernelStatus) Valid() bool {
	switch s {
	case KernelStatusValidated, KernelStatusInvalid, KernelStatusTesting, KernelStatusDeployed:
		return true
	}
	return false
}

// TopicName is an Oona message bus topic.
type TopicName string

// The Oona topics.
const (
	TopicTelemetrySeedHealth           TopicName = "telemetry.seed.health"
	TopicControlKasminaCommands        TopicName = "control.kasmina.commands"
	TopicCompilationBlueprintSubmitted TopicName = "compilation.blueprint.submitted"
	TopicCompilationKernelReady        TopicName = "compilation.kernel.ready"
	TopicValidationKernelCharacterized TopicName = "validation.kernel.characterized"
	TopicSystemEventsEpoch             TopicName = "system.events.epoch"
	TopicInnovationFieldReports        TopicName = "innovation.field_reports"
)

// TopicNames lists every topic.
var TopicNames = []TopicName{TopicTelemetrySeedHealth, TopicControlKasminaCommands,
	TopicCompilationBlueprintSubmitted, TopicCompilationKernelReady, TopicValidationKernelCharacterized,
	TopicSystemEventsEpoch, TopicInnovationFieldReports}

// Valid reports whether t is one of the defined topics.
func (t TopicName) Valid() bool {
	switch t {
	case TopicTelemetrySeedHealth, TopicControlKasminaCommands, TopicCompilationBlueprintSubmitted,
		TopicCompilationKernelReady, TopicValidationKernelCharacterized, TopicSystemEventsEpoch,
		TopicInnovationFieldReports:
		return true
	}
	return false
}

// title mirrors Python's str.title() for the lowercase ASCII enum values.
func title(s string) string {
	if s == "" {
		return s
	}
	b := []byte(s)
	up := true
	for i, c := range b {
		isLetter := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if isLetter {
			if up && c >= 'a' && c <= 'z' {
				b[i] = c - 'a' + 'A'
			} else if !up && c >= 'A' && c <= 'Z' {
				b[i] = c - 'A' + 'a'
			}
			up = false
		} else {
			up = true
		}
	}
	return string(b)
}
