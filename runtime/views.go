package runtime

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/cache"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/placement"
)

// Move records a re-placement.
type Move struct {
	At     time.Time `json:"at"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
}

// KernelView is what the API shows of a loaded kernel. Source names the
// artifact with its credentials redacted (source.Redact).
type KernelView struct {
	Name     string `json:"name"`
	KernelID string `json:"kernel_id"`
	// Source is where this process read the kernel's bytes from: the
	// reference it was loaded from, or its copy in the state directory
	// after a restart, in which case OriginalSource is the reference it
	// was first loaded from.
	Source         string `json:"source,omitempty"`
	OriginalSource string `json:"original_source,omitempty"`
	// ArtifactID is what a seed's kernel was loaded from (load_kernel's
	// artifact_id), redacted like Source.
	ArtifactID     string                   `json:"artifact_id,omitempty"`
	SHA256         string                   `json:"sha256"`
	InputShape     []int                    `json:"input_shape"`
	OutputShape    []int                    `json:"output_shape"`
	ParameterCount int                      `json:"parameter_count"`
	Requirements   []string                 `json:"device_requirements"`
	Placement      PlacementView            `json:"placement"`
	ExecutedOn     string                   `json:"executed_on"`
	Executor       string                   `json:"executor"`
	Degraded       bool                     `json:"degraded"`
	DegradedReason string                   `json:"degraded_reason,omitempty"`
	Fallback       string                   `json:"cpu_fallback"`
	Layer          string                   `json:"layer"`
	LayerID        int                      `json:"layer_id"`
	SeedIdx        int                      `json:"seed_idx"`
	Breaker        admission.BreakerState   `json:"breaker"`
	BreakerReason  string                   `json:"breaker_reason,omitempty"`
	MaxBatch       int                      `json:"max_batch"`
	Calls          int64                    `json:"calls"`
	Failures       int64                    `json:"failures"`
	Moves          []Move                   `json:"moves"`
	Memory         kernels.MemoryCheck      `json:"memory_check"`
	ObservedMiB    float64                  `json:"observed_load_mib"`
	Metadata       contracts.KernelMetadata `json:"metadata"`
	LoadedAt       time.Time                `json:"loaded_at"`
	// Unchanged is true when Load found this kernel already loaded with
	// the same content and target and changed nothing (HTTP answers 200,
	// not 201).
	Unchanged bool `json:"-"`
}

// PlacementView is a placement decision as the API and `place` show it.
type PlacementView struct {
	Device         string          `json:"device"`
	UUID           string          `json:"uuid"`
	Kind           string          `json:"kind,omitempty"`
	EstimateMiB    float64         `json:"estimate_mib"`
	EstimateSource string          `json:"estimate_source,omitempty"`
	ContractMiB    float64         `json:"contract_estimate_mib"`
	FloorMiB       float64         `json:"floor_estimate_mib"`
	Batch          int             `json:"batch"`
	FreeBeforeMiB  float64         `json:"effective_free_before_mib"`
	FreeAfterMiB   float64         `json:"effective_free_after_mib"`
	Degraded       bool            `json:"degraded"`
	Fallback       bool            `json:"fallback"`
	FallbackReason string          `json:"fallback_reason,omitempty"`
	Reason         string          `json:"reason"`
	Candidates     []CandidateView `json:"candidates"`
}

// CandidateView is one device considered.
type CandidateView struct {
	Device           string  `json:"device"`
	UUID             string  `json:"uuid,omitempty"`
	Kind             string  `json:"kind"`
	Fits             bool    `json:"fits"`
	Reason           string  `json:"reason"`
	FreeMiB          float64 `json:"free_mib"`
	ReservedMiB      float64 `json:"reserved_mib"`
	HeadroomMiB      float64 `json:"headroom_mib"`
	EffectiveFreeMiB float64 `json:"effective_free_mib"`
}

// viewDecision renders a decision for the API.
func viewDecision(d *placement.Decision, req placement.Request, batch int) PlacementView {
	v := PlacementView{
		Device: d.Device, UUID: d.UUID, EstimateMiB: d.EstimateMiB, EstimateSource: d.EstimateSource,
		ContractMiB: req.ContractMiB, FloorMiB: req.FloorMiB, Batch: batch,
		FreeBeforeMiB: d.EffectiveFreeBeforeMiB, FreeAfterMiB: d.EffectiveFreeAfterMiB,
		Degraded: d.Degraded, Fallback: d.Fallback, FallbackReason: d.FallbackReason(),
		Reason: d.Reason(), Candidates: make([]CandidateView, len(d.Candidates)),
	}
	if d.Placed() {
		v.Kind = d.Kind.String()
	}
	for i := range d.Candidates {
		c := &d.Candidates[i]
		v.Candidates[i] = CandidateView{Device: c.Device, UUID: c.UUID, Kind: c.Kind, Fits: c.Fits, Reason: c.Reason(),
			FreeMiB: c.FreeMiB, ReservedMiB: c.ReservedMiB, HeadroomMiB: c.HeadroomMiB, EffectiveFreeMiB: c.EffectiveFreeMiB}
	}
	return v
}

// placementRequestFor builds the placement request for a kernel's metadata at
// a batch size. floorMiB is the loaded module's weights-plus-activations
// estimate; without a loaded module (a dry run from a document) it is
// parameter_count float32 weights plus float32 input and output
// activations for the batch.
func placementRequestFor(md *contracts.KernelMetadata, batch int, floorMiB float64, fb placement.Fallback) placement.Request {
	if floorMiB <= 0 {
		floorMiB = documentFloorMiB(md, batch)
	}
	return placement.Request{
		Kernel:       md.KernelID,
		Requirements: md.DeviceRequirements,
		ContractMiB:  md.GetMemoryEstimate(batch),
		FloorMiB:     floorMiB,
		Fallback:     fb,
	}
}

// documentFloorMiB is the memory floor knowable from metadata alone:
// float32 weights plus the batch's float32 input and output.
func documentFloorMiB(md *contracts.KernelMetadata, batch int) float64 {
	prod := func(s []int) float64 {
		p := 1.0
		for _, v := range s {
			p *= float64(v)
		}
		return p
	}
	bytes := 4 * (float64(md.ParameterCount) + float64(batch)*(prod(md.InputShape)+prod(md.OutputShape)))
	return bytes / (1 << 20)
}

// Plan is a dry run: where would a kernel with this metadata go at this
// batch size, given the devices now and the host's reservations? fb nil
// uses the host's policy.
func (h *Host) Plan(md *contracts.KernelMetadata, batch int, fb *placement.Fallback) (PlacementView, error) {
	if batch <= 0 {
		batch = h.cfg.PlacementBatch
	}
	policy := h.cfg.Fallback
	if fb != nil {
		policy = *fb
	}
	req := placementRequestFor(md, batch, 0, policy)
	dec, err := h.planner.Plan(req, devices(h.inv.Snapshot()), h.ledger)
	if err != nil {
		return PlacementView{}, failure.Wrap(failure.BadInput, err)
	}
	return viewDecision(&dec, req, batch), nil
}

func (h *Host) placementRequest(l *loaded) placement.Request {
	return placementRequestFor(&l.meta, h.cfg.PlacementBatch, l.kernel.MemoryEstimateMiB(h.cfg.PlacementBatch), l.fallback)
}

func (h *Host) view(l *loaded) KernelView {
	l.mu.Lock()
	dec := l.decision
	rt := l.route.Load()
	moves := append([]Move(nil), l.moves...)
	l.mu.Unlock()
	layerID, ok := h.book.layerID(l.seed.layer)
	if !ok {
		layerID = -1
	}
	v := KernelView{
		Name: l.name, KernelID: l.meta.KernelID, Source: redactRef(l.source), OriginalSource: redactRef(l.origin), ArtifactID: redactRef(l.artifact),
		SHA256:     l.kernel.SHA256(),
		InputShape: l.kernel.InputShape(), OutputShape: l.kernel.OutputShape(), ParameterCount: l.kernel.ParameterCount(),
		Requirements: l.meta.DeviceRequirements,
		Placement:    viewDecision(&dec, h.placementRequest(l), h.cfg.PlacementBatch),
		ExecutedOn:   rt.exec.Device(), Executor: rt.exec.Name(),
		Fallback: l.fallback.String(),
		Layer:    l.seed.layer, LayerID: layerID, SeedIdx: l.seed.idx,
		Calls: l.calls.Load(), Failures: l.failures.Load(), MaxBatch: l.maxBatch,
		Moves: moves, Memory: l.kernel.MemoryCheck(), ObservedMiB: float64(l.observed) / (1 << 20),
		Metadata: l.meta, LoadedAt: l.loadedAt,
	}
	if v.Requirements == nil {
		v.Requirements = []string{}
	}
	if v.Moves == nil {
		v.Moves = []Move{}
	}
	v.Degraded, v.DegradedReason = rt.degraded != "", rt.degraded
	v.Breaker, v.BreakerReason = l.breaker.Status()
	return v
}

// Stats are the host's counters.
type Stats struct {
	// Cache is the cache of parsed kernels'.
	Cache cache.Stats
}

// Stats returns the host's counters.
func (h *Host) Stats() Stats { return Stats{Cache: h.cache.Stats()} }

// MetadataOf reads a CompiledKernel document, or a bare KernelMetadata
// document, and returns its metadata (for a dry run of placement).
func MetadataOf(doc []byte) (*contracts.KernelMetadata, error) {
	var probe struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(doc, &probe); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if len(probe.Metadata) > 0 {
		ck, err := contracts.DecodeCompiledKernel(doc)
		if err != nil {
			return nil, err
		}
		return &ck.Metadata, nil
	}
	md, err := contracts.DecodeKernelMetadata(doc)
	if err != nil {
		return nil, err
	}
	return &md, nil
}
