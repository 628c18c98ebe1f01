package contracts

// The operational models' types, decoders, checks and encoders are
// generated (models_gen.go, from the spec in internal/modelgen); their
// constructors and methods are here.

// NewHealthSignal returns a HealthSignal holding the reference's defaults:
// health_score 1.0, active_seeds 1, total_seeds 1, timestamp now.
func NewHealthSignal() HealthSignal {
	return HealthSignal{HealthScore: 1, ActiveSeeds: 1, TotalSeeds: 1, Timestamp: UnixNow()}
}

// HealthStatus is "Healthy" (score ≥ 0.8), "Warning" (≥ 0.6) or "Critical".
func (h HealthSignal) HealthStatus() string {
	switch {
	case h.HealthScore >= 0.8:
		return "Healthy"
	case h.HealthScore >= 0.6:
		return "Warning"
	}
	return "Critical"
}

// IsHealthy reports a score of at least 0.7 with fewer than 5 errors.
func (h HealthSignal) IsHealthy() bool { return h.HealthScore >= 0.7 && h.ErrorCount < 5 }

// ModelGraphState is the aggregated graph state Tamiyo analyses. It is a
// plain in-process value (a dataclass in the reference), not a wire
// contract, so it has no JSON form of its own.
type ModelGraphState struct {
	Topology          any
	HealthSignals     map[string]HealthSignal
	HealthTrends      map[string]float64
	ProblematicLayers map[string]struct{}
	OverallHealth     float64
	AnalysisTimestamp float64
}

// SystemHealth is "Critical" when load or memory exceeds 0.9, "Warning"
// above 0.7, else "Normal".
func (s SystemStatePacket) SystemHealth() string {
	switch {
	case s.SystemLoad > 0.9 || s.MemoryUsage > 0.9:
		return "Critical"
	case s.SystemLoad > 0.7 || s.MemoryUsage > 0.7:
		return "Warning"
	}
	return "Normal"
}

// IsOverloaded reports load or memory above 0.8.
func (s SystemStatePacket) IsOverloaded() bool { return s.SystemLoad > 0.8 || s.MemoryUsage > 0.8 }

// Adaptation types accepted by AdaptationDecision.
const (
	AdaptationAddSeed            = "add_seed"
	AdaptationRemoveSeed         = "remove_seed"
	AdaptationModifyArchitecture = "modify_architecture"
	AdaptationOptimizeParameters = "optimize_parameters"
)

// NewAdaptationDecision returns a decision with the reference's defaults
// (empty metadata, timestamp now).
func NewAdaptationDecision(layerName, adaptationType string, confidence, urgency float64) AdaptationDecision {
	return AdaptationDecision{LayerName: layerName, AdaptationType: adaptationType, Confidence: confidence,
		Urgency: urgency, Metadata: map[string]any{}, Timestamp: UnixNow()}
}

// DecisionPriority is "High" when the mean of confidence and urgency is
// at least 0.8, "Medium" at least 0.5, else "Low".
func (a AdaptationDecision) DecisionPriority() string {
	score := (a.Confidence + a.Urgency) / 2
	switch {
	case score >= 0.8:
		return "High"
	case score >= 0.5:
		return "Medium"
	}
	return "Low"
}

// ShouldExecuteImmediately reports urgency above 0.7 and confidence above 0.6.
func (a AdaptationDecision) ShouldExecuteImmediately() bool {
	return a.Urgency > 0.7 && a.Confidence > 0.6
}
