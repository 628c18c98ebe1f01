// Package placement decides where a compiled kernel runs: which GPU, MIG
// instance or the CPU, given the kernel's device requirements, its memory
// estimate, the devices' live free memory and what the host has already
// promised to other kernels.
//
// # Admission
//
// A device qualifies for a kernel when it is visible, healthy, matches one
// of the kernel's requirements, and
//
//	live free − outstanding reservations − headroom ≥ estimate
//
// All three numbers are reported for every candidate. Using only the ledger
// of reservations overcommits when other processes (the training job itself)
// allocate on the GPU; using only NVML's live free memory races between
// concurrent loads that have been placed but not yet allocated. The ledger
// covers exactly that gap (see Ledger).
//
// # Estimate
//
// The contract's estimate, KernelMetadata.get_memory_estimate(batch) =
// memory_footprint_mb × batch/32, shrinks below the size of the weights at
// small batches, so the estimate used is
//
//	max(contract estimate, weights + activations(batch))
//
// and the decision says which of the two decided.
//
// # Preferences and policies
//
// # Device names
//
// One naming serves requests, decisions, views and device_requirements,
// and is written once, in DeviceName: a device that runs work on a GPU (a
// whole GPU, or a MIG instance) is "cuda:N", N being its CUDA ordinal, the
// number torch.device("cuda:N") gives it in this process (under
// CUDA_VISIBLE_DEVICES, which on a MIG node enumerates the MIG instances);
// the CPU is "cpu". A GPU whose MIG mode is enabled runs no work itself and
// has no ordinal. The caller building Devices (the runtime, from the
// device inventory) sets Ordinal and Name = DeviceName(Ordinal).
//
// device_requirements is an ordered preference list: "cuda" (any GPU or MIG
// instance), "cuda:N" (the GPU or MIG instance named cuda:N),
// "cuda:GPU-<uuid>" or "cuda:MIG-<uuid>" (one device, by UUID or a unique
// prefix), "cpu". An empty list means any device, GPUs first. The first requirement that some device satisfies
// wins; among the devices it matches the policy picks one:
//
//   - BestFit (default) picks the device with the least effective free
//     memory left after placing. It packs kernels tightly and keeps large
//     holes free for large kernels; right when kernels vary in size and the
//     GPUs are shared with a training job that wants big contiguous blocks.
//   - Spread picks the device with the most effective free memory left.
//     It balances kernels across GPUs, which is right when many small
//     kernels serve traffic concurrently and per-device contention matters
//     more than fragmentation.
//
// When no GPU qualifies, a kernel whose requirements name only GPUs falls
// back to the CPU according to the Fallback policy (allow, degraded, deny);
// the decision carries the reason (no GPU visible, not enough free memory on
// any, all unhealthy, requirement not met).
package placement

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Kind is the kind of a device as placement sees it.
type Kind uint8

// Device kinds.
const (
	KindGPU Kind = iota
	KindMIG
	KindCPU
)

func (k Kind) String() string {
	switch k {
	case KindGPU:
		return "gpu"
	case KindMIG:
		return "mig"
	case KindCPU:
		return "cpu"
	}
	return "unknown"
}

// CPUName is the CPU's device name.
const CPUName = "cpu"

// DeviceName is the name of the GPU or MIG instance with CUDA ordinal
// ordinal: "cuda:<ordinal>" (see Device names above).
func DeviceName(ordinal int) string { return "cuda:" + strconv.Itoa(ordinal) }

// Device is one placement target, built by the caller from a device
// snapshot. Memory is in MiB, as memory_footprint_mb is read everywhere.
type Device struct {
	// Name is how requests and responses refer to the device:
	// DeviceName(Ordinal) for a GPU or a MIG instance, CPUName for the
	// CPU.
	Name string
	Kind Kind
	// Ordinal is the CUDA ordinal of a GPU or MIG instance (the N of
	// cuda:N), -1 for a GPU that has none (MIG mode enabled); unused for
	// the CPU.
	Ordinal int
	UUID    string
	// Healthy is false for unhealthy or lost devices; HealthReason says why.
	Healthy      bool
	HealthReason string
	// MIGEnabled marks a GPU whose memory belongs to its MIG instances: it
	// takes no kernels itself.
	MIGEnabled bool
	// FreeMiB is the live free memory (NVML v2 for GPUs, available memory
	// under the cgroup limit for the CPU). TotalMiB is the device's total.
	FreeMiB  float64
	TotalMiB float64
}

// Fallback says whether a kernel whose requirements name only GPUs may run
// on the CPU when no GPU qualifies.
type Fallback uint8

// Fallback policies.
const (
	// FallbackDegraded lets the kernel fall back and marks it degraded.
	FallbackDegraded Fallback = iota
	// FallbackAllow lets the kernel fall back without marking it.
	FallbackAllow
	// FallbackDeny refuses the kernel.
	FallbackDeny
)

// ParseFallback reads "allow", "deny" or "degraded".
func ParseFallback(s string) (Fallback, error) {
	switch s {
	case "degraded", "":
		return FallbackDegraded, nil
	case "allow":
		return FallbackAllow, nil
	case "deny":
		return FallbackDeny, nil
	}
	return 0, fmt.Errorf("cpu fallback %q: want allow, deny or degraded", s)
}

func (f Fallback) String() string {
	switch f {
	case FallbackAllow:
		return "allow"
	case FallbackDeny:
		return "deny"
	}
	return "degraded"
}

// Policy chooses among the devices that fit one requirement.
type Policy uint8

// Policies.
const (
	BestFit Policy = iota
	Spread
)

// ParsePolicy reads "best-fit" or "spread".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "best-fit", "bestfit", "":
		return BestFit, nil
	case "spread":
		return Spread, nil
	}
	return 0, fmt.Errorf("placement policy %q: want best-fit or spread", s)
}

func (p Policy) String() string {
	if p == Spread {
		return "spread"
	}
	return "best-fit"
}

// Request is what is being placed.
type Request struct {
	// Kernel identifies the kernel in reasons and in the ledger.
	Kernel string
	// Requirements is KernelMetadata.device_requirements, in preference
	// order. Empty means any device, GPUs first.
	Requirements []string
	// ContractMiB is KernelMetadata.get_memory_estimate(batch).
	ContractMiB float64
	// FloorMiB is weights plus activations at this batch size.
	FloorMiB float64
	// Fallback applies when the requirements name only GPUs.
	Fallback Fallback
}

// EstimateMiB is the memory the request needs: the larger of the contract's
// estimate and the weights-plus-activations floor.
func (r Request) EstimateMiB() (mib float64, source string) {
	if r.FloorMiB > r.ContractMiB {
		return r.FloorMiB, "weights+activations"
	}
	return r.ContractMiB, "contract"
}

// Options configure a Planner.
type Options struct {
	Policy Policy
	// HeadroomMiB is kept free on every GPU on top of the estimate.
	HeadroomMiB float64
	// HeadroomFraction of each GPU's total memory is kept free as well.
	HeadroomFraction float64
	// CPUHeadroomMiB is kept free on the CPU.
	CPUHeadroomMiB float64
}

// Planner makes placement decisions. It is stateless apart from its options
// and safe for concurrent use; reservations live in a Ledger.
type Planner struct {
	opts Options
}

// NewPlanner returns a planner with the given options.
func NewPlanner(opts Options) *Planner { return &Planner{opts: opts} }

// Verdict classifies a candidate.
type Verdict uint8

// Candidate verdicts. Every verdict but Fits is a rejection.
const (
	Fits Verdict = iota
	NotRequested
	Unhealthy
	MIGParent
	NoMemory
	FitsNotChosen
	LowerPreference
)

// Candidate is one device considered for a request, with the numbers that
// decided it.
type Candidate struct {
	Device  string  `json:"device"`
	UUID    string  `json:"uuid,omitempty"`
	Kind    string  `json:"kind"`
	Fits    bool    `json:"fits"`
	Verdict Verdict `json:"-"`
	// Requirement is the requirement this device matched ("" if none).
	Requirement string `json:"requirement,omitempty"`
	// FreeMiB is the live free memory; ReservedMiB what the host has
	// promised on this device; HeadroomMiB what is kept free.
	FreeMiB     float64 `json:"free_mib"`
	ReservedMiB float64 `json:"reserved_mib"`
	HeadroomMiB float64 `json:"headroom_mib"`
	// EffectiveFreeMiB = FreeMiB − ReservedMiB − HeadroomMiB.
	EffectiveFreeMiB float64 `json:"effective_free_mib"`
	health           string
	estimate         float64
}

// Reason says in words why the candidate fits or was rejected.
func (c *Candidate) Reason() string {
	switch c.Verdict {
	case Fits:
		return fmt.Sprintf("fits: %.0f MiB free − %.0f reserved − %.0f headroom = %.0f MiB ≥ %.0f MiB needed",
			c.FreeMiB, c.ReservedMiB, c.HeadroomMiB, c.EffectiveFreeMiB, c.estimate)
	case FitsNotChosen:
		return fmt.Sprintf("fits (%.0f MiB effective free ≥ %.0f MiB needed) but another device was chosen", c.EffectiveFreeMiB, c.estimate)
	case LowerPreference:
		return fmt.Sprintf("fits (%.0f MiB effective free) but an earlier requirement was satisfied first", c.EffectiveFreeMiB)
	case NotRequested:
		return "not among the kernel's device requirements"
	case Unhealthy:
		if c.health != "" {
			return "unhealthy: " + c.health
		}
		return "unhealthy"
	case MIGParent:
		return "MIG mode is enabled: kernels run on its MIG instances"
	case NoMemory:
		return fmt.Sprintf("not enough memory: %.0f MiB free − %.0f reserved − %.0f headroom = %.0f MiB < %.0f MiB needed",
			c.FreeMiB, c.ReservedMiB, c.HeadroomMiB, c.EffectiveFreeMiB, c.estimate)
	}
	return "unknown"
}

// Decision is the outcome of planning one request.
type Decision struct {
	// Device is the chosen device's name, "" when nothing fits.
	Device string
	UUID   string
	Kind   Kind
	// EstimateMiB is the memory reserved; EstimateSource names which bound
	// decided it ("contract" or "weights+activations").
	EstimateMiB    float64
	EstimateSource string
	// EffectiveFreeBeforeMiB and EffectiveFreeAfterMiB are the chosen
	// device's effective free memory before and after placing.
	EffectiveFreeBeforeMiB float64
	EffectiveFreeAfterMiB  float64
	// Degraded is set when the kernel asked for a GPU and fell back to the
	// CPU under FallbackDegraded. Shortfall says why no GPU took it (also
	// when nothing did), Denied that its policy refused the CPU.
	Degraded  bool
	Fallback  bool
	Shortfall Shortfall
	Denied    bool
	// Requirement is the requirement that was satisfied.
	Requirement string
	Candidates  []Candidate
}

// Placed reports whether a device was found.
func (d *Decision) Placed() bool { return d.Device != "" }

// FallbackReason says in words why a kernel that asked for a GPU got none
// ("" when it got one or asked for none).
func (d *Decision) FallbackReason() string {
	if d.Shortfall == NoShortfall {
		return ""
	}
	if d.Denied {
		return d.Shortfall.String() + " and CPU fallback is denied"
	}
	return d.Shortfall.String()
}

// Shortfall says why no GPU took a kernel whose requirements name only
// GPUs. Metric labels come from it (Label), messages from String.
type Shortfall uint8

// Shortfalls, from the first that applies.
const (
	// NoShortfall: a GPU took the kernel, or it did not ask for one.
	NoShortfall Shortfall = iota
	// NoGPUVisible: the host sees no GPU at all.
	NoGPUVisible
	// RequirementNotMet: no GPU meets the kernel's device requirements.
	RequirementNotMet
	// AllUnhealthy: every GPU that meets them is unhealthy.
	AllUnhealthy
	// InsufficientMemory: none of the healthy ones has room.
	InsufficientMemory
)

// String says the shortfall in words.
func (s Shortfall) String() string {
	switch s {
	case NoGPUVisible:
		return "no GPU is visible"
	case RequirementNotMet:
		return "no GPU meets the kernel's device requirements"
	case AllUnhealthy:
		return "every GPU that meets the requirements is unhealthy"
	case InsufficientMemory:
		return "no GPU has enough free memory"
	}
	return ""
}

// Label is the shortfall as a bounded metric label value.
func (s Shortfall) Label() string {
	switch s {
	case NoGPUVisible:
		return "no_gpu"
	case RequirementNotMet:
		return "requirement_not_met"
	case AllUnhealthy:
		return "unhealthy"
	case InsufficientMemory:
		return "insufficient_memory"
	}
	return "none"
}

// MoveReason says why a kernel must leave the device it is placed on.
// Metric labels come from it (Label); MustLeave says it in words too.
type MoveReason uint8

// Move reasons.
const (
	// Stay: the device can still hold the kernel.
	Stay MoveReason = iota
	// DeviceGone: the device is no longer visible.
	DeviceGone
	// DeviceUnhealthy: the device turned unhealthy.
	DeviceUnhealthy
	// MemoryPressure: the device's live free memory dropped below what the
	// host has reserved on it plus headroom.
	MemoryPressure
)

// Label is the reason as a bounded metric label value.
func (r MoveReason) Label() string {
	switch r {
	case DeviceGone:
		return "invisible"
	case DeviceUnhealthy:
		return "unhealthy"
	case MemoryPressure:
		return "memory_pressure"
	}
	return "none"
}

// MustLeave says whether a kernel placed on the device named device must
// leave it, given the devices now and the host's reservations, and why in
// words: the device is gone or unhealthy, or (a GPU) its live free memory
// no longer covers the reservations on it plus headroom.
func (p *Planner) MustLeave(device string, devices []Device, reserved Reservations) (MoveReason, string) {
	i := slices.IndexFunc(devices, func(d Device) bool { return d.Name == device })
	if i < 0 {
		return DeviceGone, "device no longer visible"
	}
	d := &devices[i]
	switch {
	case !d.Healthy:
		return DeviceUnhealthy, "device unhealthy: " + d.HealthReason
	case d.Kind == KindCPU:
		return Stay, ""
	}
	res := 0.0
	if reserved != nil {
		res = reserved.ReservedMiB(d.Name)
	}
	headroom := p.opts.HeadroomMiB + p.opts.HeadroomFraction*d.TotalMiB
	if d.FreeMiB-res-headroom < 0 {
		return MemoryPressure, fmt.Sprintf("device memory pressure: %.0f MiB free − %.0f reserved − %.0f headroom < 0",
			d.FreeMiB, res, headroom)
	}
	return Stay, ""
}

// Reason says in words why the decision came out as it did.
func (d *Decision) Reason() string {
	var b strings.Builder
	if !d.Placed() {
		b.WriteString("no device can take the kernel: ")
		if why := d.FallbackReason(); why != "" {
			b.WriteString(why)
			b.WriteString("; ")
		}
		first := true
		for i := range d.Candidates {
			c := &d.Candidates[i]
			if !first {
				b.WriteString("; ")
			}
			first = false
			b.WriteString(c.Device)
			b.WriteString(": ")
			b.WriteString(c.Reason())
		}
		return b.String()
	}
	fmt.Fprintf(&b, "placed on %s", d.Device)
	if d.UUID != "" {
		fmt.Fprintf(&b, " (%s)", d.UUID)
	}
	if d.Requirement != "" {
		fmt.Fprintf(&b, " for requirement %q", d.Requirement)
	}
	fmt.Fprintf(&b, ": needs %.0f MiB (%s estimate), %.0f MiB effective free before, %.0f after",
		d.EstimateMiB, d.EstimateSource, d.EffectiveFreeBeforeMiB, d.EffectiveFreeAfterMiB)
	if d.Fallback {
		b.WriteString("; fell back to the CPU because ")
		b.WriteString(d.FallbackReason())
		if d.Degraded {
			b.WriteString(" (degraded)")
		}
	}
	return b.String()
}

// Reservations reports what the host has already promised per device, in
// MiB. A Ledger implements it.
type Reservations interface {
	ReservedMiB(device string) float64
}

// requirement is one parsed entry of device_requirements.
type requirement struct {
	raw   string
	kind  reqKind
	index int
	uuid  string
}

type reqKind uint8

const (
	reqAnyGPU reqKind = iota
	reqGPUIndex
	reqUUID
	reqCPU
	reqAny
)

// ErrBadRequirement is wrapped by errors for requirements that cannot be
// parsed.
var ErrBadRequirement = fmt.Errorf("bad device requirement")

func parseRequirement(s string) (requirement, error) {
	r := requirement{raw: s}
	t := strings.ToLower(strings.TrimSpace(s))
	switch {
	case t == "cuda" || t == "gpu":
		r.kind = reqAnyGPU
	case t == "cpu":
		r.kind = reqCPU
	case strings.HasPrefix(t, "cuda:"):
		rest := strings.TrimSpace(s)[len("cuda:"):]
		if n, err := strconv.Atoi(rest); err == nil {
			if n < 0 {
				return r, fmt.Errorf("%w %q: negative GPU index", ErrBadRequirement, s)
			}
			r.kind, r.index = reqGPUIndex, n
			break
		}
		up := strings.ToUpper(rest)
		if strings.HasPrefix(up, "GPU-") || strings.HasPrefix(up, "MIG-") {
			r.kind = reqUUID
			r.uuid = rest
			break
		}
		return r, fmt.Errorf("%w %q: want cuda, cuda:N, cuda:GPU-<uuid>, cuda:MIG-<uuid> or cpu", ErrBadRequirement, s)
	default:
		return r, fmt.Errorf("%w %q: want cuda, cuda:N, cuda:GPU-<uuid>, cuda:MIG-<uuid> or cpu", ErrBadRequirement, s)
	}
	return r, nil
}

func (r *requirement) matches(d *Device) bool {
	switch r.kind {
	case reqAny:
		return true
	case reqCPU:
		return d.Kind == KindCPU
	case reqAnyGPU:
		return d.Kind == KindGPU || d.Kind == KindMIG
	case reqGPUIndex:
		// cuda:N names the device with CUDA ordinal N, a whole GPU or a
		// MIG instance alike.
		return (d.Kind == KindGPU || d.Kind == KindMIG) && d.Ordinal == r.index
	case reqUUID:
		return (d.Kind == KindGPU || d.Kind == KindMIG) && len(d.UUID) >= len(r.uuid) &&
			strings.EqualFold(d.UUID[:len(r.uuid)], r.uuid)
	}
	return false
}

// Plan decides where req runs. devices is the current snapshot (GPUs and MIG
// instances, and the CPU if it may be used); reserved reports the ledger.
// Plan does not reserve anything: use Ledger.PlaceAndReserve to decide and
// reserve atomically.
func (p *Planner) Plan(req Request, devices []Device, reserved Reservations) (Decision, error) {
	var dec Decision
	err := p.PlanInto(&dec, req, devices, reserved)
	return dec, err
}

// PlanInto is Plan writing into dec and reusing dec.Candidates' storage, so
// that a caller planning in a loop allocates nothing.
func (p *Planner) PlanInto(dec *Decision, req Request, devices []Device, reserved Reservations) error {
	var reqBuf [4]requirement
	reqs := reqBuf[:0]
	gpuOnly := len(req.Requirements) > 0
	for _, s := range req.Requirements {
		r, err := parseRequirement(s)
		if err != nil {
			return err
		}
		if r.kind == reqCPU {
			gpuOnly = false
		}
		reqs = append(reqs, r)
	}
	if len(reqs) == 0 {
		reqs = append(reqs, requirement{kind: reqAnyGPU, raw: ""}, requirement{kind: reqCPU, raw: ""})
	}
	if gpuOnly && req.Fallback != FallbackDeny {
		reqs = append(reqs, requirement{kind: reqCPU, raw: "cpu (fallback)"})
	}

	est, source := req.EstimateMiB()
	cands := dec.Candidates[:0]
	if cap(cands) < len(devices) {
		cands = make([]Candidate, len(devices))
	}
	cands = cands[:len(devices)]
	clear(cands)
	*dec = Decision{EstimateMiB: est, EstimateSource: source, Candidates: cands}

	// Evaluate every device once.
	var anyGPU, anyHealthyGPU, anyGPUMatched bool
	for i := range devices {
		d := &devices[i]
		c := &dec.Candidates[i]
		c.Device, c.UUID, c.Kind, c.estimate = d.Name, d.UUID, d.Kind.String(), est
		c.FreeMiB = d.FreeMiB
		if reserved != nil {
			c.ReservedMiB = reserved.ReservedMiB(d.Name)
		}
		if d.Kind == KindCPU {
			c.HeadroomMiB = p.opts.CPUHeadroomMiB
		} else {
			anyGPU = true
			c.HeadroomMiB = p.opts.HeadroomMiB + p.opts.HeadroomFraction*d.TotalMiB
		}
		c.EffectiveFreeMiB = c.FreeMiB - c.ReservedMiB - c.HeadroomMiB
		c.Verdict = NotRequested
		for j := range reqs {
			if reqs[j].matches(d) {
				c.Requirement = reqs[j].raw
				c.Verdict = Fits
				break
			}
		}
		switch {
		case c.Verdict == NotRequested:
		case d.MIGEnabled:
			c.Verdict = MIGParent
		case !d.Healthy:
			c.Verdict = Unhealthy
			c.health = d.HealthReason
		case c.EffectiveFreeMiB < est:
			c.Verdict = NoMemory
		}
		if d.Kind != KindCPU && c.Verdict != NotRequested && c.Verdict != MIGParent {
			anyGPUMatched = true
			if d.Healthy {
				anyHealthyGPU = true
			}
		}
	}

	// Walk the requirements in order; the first one some device fits wins.
	chosen := -1
	for j := range reqs {
		r := &reqs[j]
		for i := range devices {
			c := &dec.Candidates[i]
			if c.Verdict != Fits || !r.matches(&devices[i]) {
				continue
			}
			after := c.EffectiveFreeMiB - est
			if chosen < 0 {
				chosen = i
				continue
			}
			best := dec.Candidates[chosen].EffectiveFreeMiB - est
			if (p.opts.Policy == BestFit && after < best) || (p.opts.Policy == Spread && after > best) {
				chosen = i
			}
		}
		if chosen >= 0 {
			dec.Requirement = r.raw
			break
		}
	}
	if chosen < 0 {
		if gpuOnly {
			dec.Shortfall = gpuShortfall(anyGPU, anyGPUMatched, anyHealthyGPU)
			dec.Denied = req.Fallback == FallbackDeny
		}
		return nil
	}
	for i := range dec.Candidates {
		c := &dec.Candidates[i]
		if i == chosen || c.Verdict != Fits {
			continue
		}
		if c.Requirement == dec.Requirement {
			c.Verdict = FitsNotChosen
		} else {
			c.Verdict = LowerPreference
		}
	}
	for i := range dec.Candidates {
		dec.Candidates[i].Fits = dec.Candidates[i].Verdict == Fits || dec.Candidates[i].Verdict == FitsNotChosen || dec.Candidates[i].Verdict == LowerPreference
	}
	d := &devices[chosen]
	c := &dec.Candidates[chosen]
	dec.Device, dec.UUID, dec.Kind = d.Name, d.UUID, d.Kind
	dec.EffectiveFreeBeforeMiB = c.EffectiveFreeMiB
	dec.EffectiveFreeAfterMiB = c.EffectiveFreeMiB - est
	if d.Kind == KindCPU && gpuOnly {
		dec.Fallback = true
		dec.Shortfall = gpuShortfall(anyGPU, anyGPUMatched, anyHealthyGPU)
		dec.Degraded = req.Fallback == FallbackDegraded
	}
	return nil
}

// gpuShortfall says why no GPU took a kernel that asked for one.
func gpuShortfall(anyGPU, anyMatched, anyHealthy bool) Shortfall {
	switch {
	case !anyGPU:
		return NoGPUVisible
	case !anyMatched:
		return RequirementNotMet
	case !anyHealthy:
		return AllUnhealthy
	}
	return InsufficientMemory
}
