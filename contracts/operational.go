package contracts

// HealthSignal is the high-frequency health telemetry a seed publishes on
// TopicTelemetrySeedHealth.
type HealthSignal struct {
	LayerID              int     `json:"layer_id"`
	SeedID               int     `json:"seed_id"`
	ChunkID              int     `json:"chunk_id"`
	Epoch                int     `json:"epoch"`
	ActivationVariance   float64 `json:"activation_variance"`
	DeadNeuronRatio      float64 `json:"dead_neuron_ratio"`
	AvgCorrelation       float64 `json:"avg_correlation"`
	IsReadyForTransition bool    `json:"is_ready_for_transition"`
	HealthScore          float64 `json:"health_score"`
	ExecutionLatency     float64 `json:"execution_latency"`
	ErrorCount           int     `json:"error_count"`
	ActiveSeeds          int     `json:"active_seeds"`
	TotalSeeds           int     `json:"total_seeds"`
	Timestamp            float64 `json:"timestamp"` // unix seconds
}

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

const (
	hsLayerID = iota
	hsSeedID
	hsChunkID
	hsEpoch
	hsActivationVariance
	hsDeadNeuronRatio
	hsAvgCorrelation
	hsIsReady
	hsHealthScore
	hsExecutionLatency
	hsErrorCount
	hsActiveSeeds
	hsTotalSeeds
	hsTimestamp
)

const hsRequired = 1<<hsLayerID | 1<<hsSeedID | 1<<hsChunkID | 1<<hsEpoch |
	1<<hsActivationVariance | 1<<hsDeadNeuronRatio | 1<<hsAvgCorrelation

// Validate checks every bound of the contract.
func (h HealthSignal) Validate() error {
	errs := fieldErrors{model: "HealthSignal"}
	h.check(&errs, "", 0)
	return errs.err()
}

func (h *HealthSignal) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, hsLayerID) {
		geI(errs, p, "layer_id", h.LayerID, 0)
	}
	if !has(bad, hsSeedID) {
		geI(errs, p, "seed_id", h.SeedID, 0)
	}
	if !has(bad, hsChunkID) {
		geI(errs, p, "chunk_id", h.ChunkID, 0)
	}
	if !has(bad, hsEpoch) {
		geI(errs, p, "epoch", h.Epoch, 0)
	}
	if !has(bad, hsActivationVariance) {
		geF(errs, p, "activation_variance", h.ActivationVariance, 0)
	}
	if !has(bad, hsDeadNeuronRatio) {
		rangeF(errs, p, "dead_neuron_ratio", h.DeadNeuronRatio, 0, 1)
	}
	if !has(bad, hsAvgCorrelation) {
		rangeF(errs, p, "avg_correlation", h.AvgCorrelation, -1, 1)
	}
	if !has(bad, hsHealthScore) {
		rangeF(errs, p, "health_score", h.HealthScore, 0, 1)
	}
	if !has(bad, hsExecutionLatency) {
		geF(errs, p, "execution_latency", h.ExecutionLatency, 0)
	}
	if !has(bad, hsErrorCount) {
		geI(errs, p, "error_count", h.ErrorCount, 0)
	}
	if !has(bad, hsActiveSeeds) {
		geI(errs, p, "active_seeds", h.ActiveSeeds, 0)
	}
	if !has(bad, hsTotalSeeds) {
		geI(errs, p, "total_seeds", h.TotalSeeds, 1)
	}
	if !has(bad, hsTimestamp) {
		checkFinite(errs, p, "timestamp", h.Timestamp)
	}
}

// DecodeHealthSignal decodes and validates one HealthSignal in a single
// pass, applying defaults for absent optional fields.
func DecodeHealthSignal(data []byte) (HealthSignal, error) {
	var h HealthSignal
	d := newDecoder("HealthSignal", data)
	h.decode(&d, "")
	return h, d.finish()
}

// UnmarshalJSON decodes and validates; on error h is left unchanged.
func (h *HealthSignal) UnmarshalJSON(data []byte) error {
	v, err := DecodeHealthSignal(data)
	if err != nil {
		return err
	}
	*h = v
	return nil
}

// MarshalJSON encodes h in the reference's field order.
func (h HealthSignal) MarshalJSON() ([]byte, error) { return h.AppendJSON(nil), nil }

func (h *HealthSignal) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var seen, bad uint32
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		idx := -1
		var good bool
		switch string(k) {
		case "layer_id":
			idx = hsLayerID
			h.LayerID, good = d.int(p, "layer_id")
		case "seed_id":
			idx = hsSeedID
			h.SeedID, good = d.int(p, "seed_id")
		case "chunk_id":
			idx = hsChunkID
			h.ChunkID, good = d.int(p, "chunk_id")
		case "epoch":
			idx = hsEpoch
			h.Epoch, good = d.int(p, "epoch")
		case "activation_variance":
			idx = hsActivationVariance
			h.ActivationVariance, good = d.float(p, "activation_variance")
		case "dead_neuron_ratio":
			idx = hsDeadNeuronRatio
			h.DeadNeuronRatio, good = d.float(p, "dead_neuron_ratio")
		case "avg_correlation":
			idx = hsAvgCorrelation
			h.AvgCorrelation, good = d.float(p, "avg_correlation")
		case "is_ready_for_transition":
			idx = hsIsReady
			h.IsReadyForTransition, good = d.boolean(p, "is_ready_for_transition")
		case "health_score":
			idx = hsHealthScore
			h.HealthScore, good = d.float(p, "health_score")
		case "execution_latency":
			idx = hsExecutionLatency
			h.ExecutionLatency, good = d.float(p, "execution_latency")
		case "error_count":
			idx = hsErrorCount
			h.ErrorCount, good = d.int(p, "error_count")
		case "active_seeds":
			idx = hsActiveSeeds
			h.ActiveSeeds, good = d.int(p, "active_seeds")
		case "total_seeds":
			idx = hsTotalSeeds
			h.TotalSeeds, good = d.int(p, "total_seeds")
		case "timestamp":
			idx = hsTimestamp
			h.Timestamp, good = d.float(p, "timestamp")
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
		if idx >= 0 {
			seen |= 1 << idx
			if good {
				bad &^= 1 << idx
			} else {
				bad |= 1 << idx
			}
		}
	}
	if d.syn != nil {
		return
	}
	if seen&hsRequired != hsRequired {
		for _, f := range [...]struct {
			i    int
			name string
		}{{hsLayerID, "layer_id"}, {hsSeedID, "seed_id"}, {hsChunkID, "chunk_id"}, {hsEpoch, "epoch"},
			{hsActivationVariance, "activation_variance"}, {hsDeadNeuronRatio, "dead_neuron_ratio"},
			{hsAvgCorrelation, "avg_correlation"}} {
			if !has(seen, f.i) {
				d.missing(p, f.name)
				bad |= 1 << f.i
			}
		}
	}
	if !has(seen, hsHealthScore) {
		h.HealthScore = 1
	}
	if !has(seen, hsActiveSeeds) {
		h.ActiveSeeds = 1
	}
	if !has(seen, hsTotalSeeds) {
		h.TotalSeeds = 1
	}
	if !has(seen, hsTimestamp) {
		h.Timestamp = UnixNow()
	}
	h.check(&d.errs, p, bad)
}

// AppendJSON appends h's JSON encoding to dst.
func (h HealthSignal) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"layer_id":`...)
	dst = appendInt(dst, h.LayerID)
	dst = append(dst, `,"seed_id":`...)
	dst = appendInt(dst, h.SeedID)
	dst = append(dst, `,"chunk_id":`...)
	dst = appendInt(dst, h.ChunkID)
	dst = append(dst, `,"epoch":`...)
	dst = appendInt(dst, h.Epoch)
	dst = append(dst, `,"activation_variance":`...)
	dst = appendFloat(dst, h.ActivationVariance)
	dst = append(dst, `,"dead_neuron_ratio":`...)
	dst = appendFloat(dst, h.DeadNeuronRatio)
	dst = append(dst, `,"avg_correlation":`...)
	dst = appendFloat(dst, h.AvgCorrelation)
	dst = append(dst, `,"is_ready_for_transition":`...)
	dst = appendBool(dst, h.IsReadyForTransition)
	dst = append(dst, `,"health_score":`...)
	dst = appendFloat(dst, h.HealthScore)
	dst = append(dst, `,"execution_latency":`...)
	dst = appendFloat(dst, h.ExecutionLatency)
	dst = append(dst, `,"error_count":`...)
	dst = appendInt(dst, h.ErrorCount)
	dst = append(dst, `,"active_seeds":`...)
	dst = appendInt(dst, h.ActiveSeeds)
	dst = append(dst, `,"total_seeds":`...)
	dst = appendInt(dst, h.TotalSeeds)
	dst = append(dst, `,"timestamp":`...)
	dst = appendFloat(dst, h.Timestamp)
	return append(dst, '}')
}

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

// SystemStatePacket is the system-wide state given to the strategic
// controller.
type SystemStatePacket struct {
	Epoch          int     `json:"epoch"`
	TotalSeeds     int     `json:"total_seeds"`
	ActiveSeeds    int     `json:"active_seeds"`
	TrainingLoss   float64 `json:"training_loss"`
	ValidationLoss float64 `json:"validation_loss"`
	SystemLoad     float64 `json:"system_load"`
	MemoryUsage    float64 `json:"memory_usage"`
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

// Validate checks every bound of the contract.
func (s SystemStatePacket) Validate() error {
	errs := fieldErrors{model: "SystemStatePacket"}
	s.check(&errs, "", 0)
	return errs.err()
}

func (s *SystemStatePacket) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, 0) {
		geI(errs, p, "epoch", s.Epoch, 0)
	}
	if !has(bad, 1) {
		geI(errs, p, "total_seeds", s.TotalSeeds, 0)
	}
	if !has(bad, 2) {
		geI(errs, p, "active_seeds", s.ActiveSeeds, 0)
	}
	if !has(bad, 3) {
		geF(errs, p, "training_loss", s.TrainingLoss, 0)
	}
	if !has(bad, 4) {
		geF(errs, p, "validation_loss", s.ValidationLoss, 0)
	}
	if !has(bad, 5) {
		rangeF(errs, p, "system_load", s.SystemLoad, 0, 1)
	}
	if !has(bad, 6) {
		rangeF(errs, p, "memory_usage", s.MemoryUsage, 0, 1)
	}
}

var sspFields = [...]string{"epoch", "total_seeds", "active_seeds", "training_loss", "validation_loss", "system_load", "memory_usage"}

// DecodeSystemStatePacket decodes and validates one SystemStatePacket.
func DecodeSystemStatePacket(data []byte) (SystemStatePacket, error) {
	var s SystemStatePacket
	d := newDecoder("SystemStatePacket", data)
	s.decode(&d, "")
	return s, d.finish()
}

// UnmarshalJSON decodes and validates; on error s is left unchanged.
func (s *SystemStatePacket) UnmarshalJSON(data []byte) error {
	v, err := DecodeSystemStatePacket(data)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalJSON encodes s in the reference's field order.
func (s SystemStatePacket) MarshalJSON() ([]byte, error) { return s.AppendJSON(nil), nil }

func (s *SystemStatePacket) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var seen, bad uint32
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		idx := -1
		var good bool
		switch string(k) {
		case "epoch":
			idx = 0
			s.Epoch, good = d.int(p, "epoch")
		case "total_seeds":
			idx = 1
			s.TotalSeeds, good = d.int(p, "total_seeds")
		case "active_seeds":
			idx = 2
			s.ActiveSeeds, good = d.int(p, "active_seeds")
		case "training_loss":
			idx = 3
			s.TrainingLoss, good = d.float(p, "training_loss")
		case "validation_loss":
			idx = 4
			s.ValidationLoss, good = d.float(p, "validation_loss")
		case "system_load":
			idx = 5
			s.SystemLoad, good = d.float(p, "system_load")
		case "memory_usage":
			idx = 6
			s.MemoryUsage, good = d.float(p, "memory_usage")
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
		if idx >= 0 {
			seen |= 1 << idx
			if good {
				bad &^= 1 << idx
			} else {
				bad |= 1 << idx
			}
		}
	}
	if d.syn != nil {
		return
	}
	for i, name := range sspFields {
		if !has(seen, i) {
			d.missing(p, name)
			bad |= 1 << i
		}
	}
	s.check(&d.errs, p, bad)
}

// AppendJSON appends s's JSON encoding to dst.
func (s SystemStatePacket) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"epoch":`...)
	dst = appendInt(dst, s.Epoch)
	dst = append(dst, `,"total_seeds":`...)
	dst = appendInt(dst, s.TotalSeeds)
	dst = append(dst, `,"active_seeds":`...)
	dst = appendInt(dst, s.ActiveSeeds)
	dst = append(dst, `,"training_loss":`...)
	dst = appendFloat(dst, s.TrainingLoss)
	dst = append(dst, `,"validation_loss":`...)
	dst = appendFloat(dst, s.ValidationLoss)
	dst = append(dst, `,"system_load":`...)
	dst = appendFloat(dst, s.SystemLoad)
	dst = append(dst, `,"memory_usage":`...)
	dst = appendFloat(dst, s.MemoryUsage)
	return append(dst, '}')
}

// Adaptation types accepted by AdaptationDecision.
const (
	AdaptationAddSeed            = "add_seed"
	AdaptationRemoveSeed         = "remove_seed"
	AdaptationModifyArchitecture = "modify_architecture"
	AdaptationOptimizeParameters = "optimize_parameters"
)

// AdaptationDecision is a strategic adaptation decision from Tamiyo. Its
// strings are stripped of surrounding white space on decode.
type AdaptationDecision struct {
	LayerName      string         `json:"layer_name"`
	AdaptationType string         `json:"adaptation_type"`
	Confidence     float64        `json:"confidence"`
	Urgency        float64        `json:"urgency"`
	Metadata       map[string]any `json:"metadata"`
	Timestamp      float64        `json:"timestamp"` // unix seconds
}

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

// Validate checks every constraint; string lengths and the pattern apply
// to the stripped strings, as in the reference.
func (a AdaptationDecision) Validate() error {
	errs := fieldErrors{model: "AdaptationDecision"}
	a.check(&errs, "", 0)
	return errs.err()
}

func (a *AdaptationDecision) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, 0) {
		strLen(errs, p, "layer_name", strip(a.LayerName), 1, 255)
	}
	if !has(bad, 1) {
		t := strip(a.AdaptationType)
		strLen(errs, p, "adaptation_type", t, 1, 100)
		if t != "" {
			oneOf(errs, p, "adaptation_type", t, AdaptationAddSeed, AdaptationRemoveSeed,
				AdaptationModifyArchitecture, AdaptationOptimizeParameters)
		}
	}
	if !has(bad, 2) {
		rangeF(errs, p, "confidence", a.Confidence, 0, 1)
	}
	if !has(bad, 3) {
		rangeF(errs, p, "urgency", a.Urgency, 0, 1)
	}
	if !has(bad, 4) {
		checkAnyMap(errs, p, "metadata", a.Metadata)
	}
	if !has(bad, 5) {
		checkFinite(errs, p, "timestamp", a.Timestamp)
	}
}

// DecodeAdaptationDecision decodes and validates one AdaptationDecision.
func DecodeAdaptationDecision(data []byte) (AdaptationDecision, error) {
	var a AdaptationDecision
	d := newDecoder("AdaptationDecision", data)
	a.decode(&d, "")
	return a, d.finish()
}

// UnmarshalJSON decodes and validates; on error a is left unchanged.
func (a *AdaptationDecision) UnmarshalJSON(data []byte) error {
	v, err := DecodeAdaptationDecision(data)
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// MarshalJSON encodes a in the reference's field order.
func (a AdaptationDecision) MarshalJSON() ([]byte, error) { return a.AppendJSON(nil), nil }

func (a *AdaptationDecision) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var seen, bad uint32
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		idx := -1
		var good bool
		switch string(k) {
		case "layer_name":
			idx = 0
			a.LayerName, good = d.str(p, "layer_name")
			a.LayerName = strip(a.LayerName)
		case "adaptation_type":
			idx = 1
			a.AdaptationType, good = d.str(p, "adaptation_type")
			a.AdaptationType = strip(a.AdaptationType)
		case "confidence":
			idx = 2
			a.Confidence, good = d.float(p, "confidence")
		case "urgency":
			idx = 3
			a.Urgency, good = d.float(p, "urgency")
		case "metadata":
			idx = 4
			a.Metadata, good = d.anyMap(p, "metadata", true)
		case "timestamp":
			idx = 5
			a.Timestamp, good = d.float(p, "timestamp")
		default:
			d.extra(p, k)
		}
		if d.syn != nil {
			return
		}
		if idx >= 0 {
			seen |= 1 << idx
			if good {
				bad &^= 1 << idx
			} else {
				bad |= 1 << idx
			}
		}
	}
	if d.syn != nil {
		return
	}
	for i, name := range [...]string{"layer_name", "adaptation_type", "confidence", "urgency"} {
		if !has(seen, i) {
			d.missing(p, name)
			bad |= 1 << i
		}
	}
	if !has(seen, 4) {
		a.Metadata = map[string]any{}
	}
	if !has(seen, 5) {
		a.Timestamp = UnixNow()
	}
	bad |= 1 << 4 // decoded free-form values are always encodable
	a.check(&d.errs, p, bad)
}

// AppendJSON appends a's JSON encoding to dst.
func (a AdaptationDecision) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"layer_name":`...)
	dst = appendString(dst, a.LayerName)
	dst = append(dst, `,"adaptation_type":`...)
	dst = appendString(dst, a.AdaptationType)
	dst = append(dst, `,"confidence":`...)
	dst = appendFloat(dst, a.Confidence)
	dst = append(dst, `,"urgency":`...)
	dst = appendFloat(dst, a.Urgency)
	dst = append(dst, `,"metadata":`...)
	dst = appendAnyMap(dst, a.Metadata)
	dst = append(dst, `,"timestamp":`...)
	dst = appendFloat(dst, a.Timestamp)
	return append(dst, '}')
}
