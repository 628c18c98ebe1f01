package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
	"github.com/google/uuid"
)

// Event says what an Apply did. Its String is the event_type of the
// outcome event (Esper's KasminaLayer names for a kernel load).
type Event uint8

// Events.
const (
	LayerDeclared Event = iota + 1
	LayerRetired
	KernelLoaded
	KernelLoadFailed
	KernelUnloaded
	SeedStateChanged
	SeedAlphaChanged
	CommandFailed
)

func (e Event) String() string {
	switch e {
	case LayerDeclared:
		return "layer_declared"
	case LayerRetired:
		return "layer_retired"
	case KernelLoaded:
		return "kernel_load_success"
	case KernelLoadFailed:
		return "kernel_load_failure"
	case KernelUnloaded:
		return "kernel_unload_success"
	case SeedStateChanged:
		return "seed_state_changed"
	case SeedAlphaChanged:
		return "seed_alpha_changed"
	case CommandFailed:
		return "command_failed"
	}
	return "none"
}

// MarshalText writes String.
func (e Event) MarshalText() ([]byte, error) { return []byte(e.String()), nil }

// Outcome is what an Apply did, for whoever asked: the answer of a
// front end, and the payload of the outcome event the seed operations
// publish (AppendJSON writes it; see runtime/oona/COMMANDS.md).
type Outcome struct {
	Event Event
	// Command is the command's name on the bus (load_kernel,
	// unload_kernel, set_seed_state, set_alpha; declare_layer and
	// retire_layer for the layer operations).
	Command string
	Layer   string
	LayerID int
	SeedIdx int
	// Artifact is what the command asked to load (LoadKernel), or what
	// the seed's kernel was loaded from.
	Artifact string
	// Kernel is the model name of the kernel the seed holds after the
	// operation ("" when none).
	Kernel string
	// From and To are the seed's states before and after (SetSeedState).
	From, To contracts.SeedState
	// Alpha is the seed's alpha as set, Clamped whether it was brought
	// into [0, 1] (SetAlpha).
	Alpha   float64
	Clamped bool
	// Unchanged is true when the operation found it done already (a
	// redelivered command, a layer declared so before).
	Unchanged bool
	// Created is true when DeclareLayer made a new layer.
	Created bool
	// FailureReason is the error's message and ErrorClass its failure
	// class, for KernelLoadFailed and CommandFailed.
	FailureReason string
	ErrorClass    failure.Class
	// Origin is the command the operation answers.
	Origin Origin
	// At is when the operation finished.
	At time.Time
}

// failed is o turned into its failure.
func failed(o Outcome, err error) Outcome {
	o.Event = CommandFailed
	if o.Command == oona.CommandLoadKernel {
		o.Event = KernelLoadFailed
	}
	o.FailureReason, o.ErrorClass = err.Error(), failure.ClassOf(err)
	o.Kernel, o.From, o.Alpha, o.Clamped, o.Unchanged, o.Created = "", "", 0, false, false, false
	return o
}

// Origin names the command an operation answers: its OonaMessage
// event_id and trace_id, and its command_id (or decision_id) when it had
// one. The outcome event carries them (trace_id in its envelope).
type Origin struct {
	EventID, CommandID, TraceID string
	// Command is the command's name as it was sent, when it differs from
	// the operation's (the HLD's request_germination is a LoadKernel).
	Command string
}

type originKey struct{}

// WithOrigin returns ctx carrying o, for Apply's outcome event.
func WithOrigin(ctx context.Context, o Origin) context.Context {
	return context.WithValue(ctx, originKey{}, o)
}

// originOf is the Origin ctx carries, with a fresh event_id when it has
// none, and that id as its trace_id when it has no trace_id either.
func originOf(ctx context.Context) Origin {
	o, _ := ctx.Value(originKey{}).(Origin)
	if o.EventID == "" {
		o.EventID = uuid.NewString()
	}
	if o.TraceID == "" {
		o.TraceID = o.EventID
	}
	return o
}

// report completes o with its origin and time and publishes it as an
// outcome event on telemetry.seed.health.
func (h *Host) report(ctx context.Context, o *Outcome) {
	o.Origin, o.At = originOf(ctx), h.cfg.Now()
	if o.Origin.Command != "" {
		o.Command = o.Origin.Command
	}
	if h.pub == nil {
		return
	}
	trace := o.Origin.TraceID
	if oona.CheckWireString("trace_id", trace) != nil {
		// A trace_id the Python reader would take for JSON (a number): the
		// event keeps it readable.
		trace = "trace-" + trace
	}
	if err := h.pub.PublishPayload(contracts.TopicTelemetrySeedHealth, h.senderID(), trace, o); err != nil {
		h.log.Warn("outcome event not published", slog.String("event_type", o.Event.String()),
			slog.String("command_event_id", o.Origin.EventID), slog.Any("err", err))
	}
}

// outcomeJSON is an Outcome as its event's payload and a front end's
// answer write it.
type outcomeJSON struct {
	EventType      string   `json:"event_type"`
	Command        string   `json:"command,omitempty"`
	LayerName      string   `json:"layer_name"`
	LayerID        int      `json:"layer_id"`
	SeedIdx        int      `json:"seed_idx"`
	ArtifactID     string   `json:"artifact_id"`
	Kernel         string   `json:"kernel,omitempty"`
	FromState      string   `json:"from_state,omitempty"`
	ToState        string   `json:"to_state,omitempty"`
	Alpha          *float64 `json:"alpha,omitempty"`
	Clamped        *bool    `json:"clamped,omitempty"`
	Unchanged      bool     `json:"unchanged,omitempty"`
	FailureReason  string   `json:"failure_reason,omitempty"`
	ErrorClass     string   `json:"error_class,omitempty"`
	CommandEventID string   `json:"command_event_id"`
	CommandID      string   `json:"command_id,omitempty"`
	TraceID        string   `json:"trace_id,omitempty"`
	Timestamp      float64  `json:"timestamp"`
}

func (o *Outcome) wire(trace bool) outcomeJSON {
	j := outcomeJSON{EventType: o.Event.String(), Command: o.Command, LayerName: o.Layer, LayerID: o.LayerID, SeedIdx: o.SeedIdx,
		ArtifactID: redactRef(o.Artifact), Kernel: o.Kernel, Unchanged: o.Unchanged, FailureReason: o.FailureReason,
		CommandEventID: o.Origin.EventID, CommandID: o.Origin.CommandID, Timestamp: float64(o.At.UnixMicro()) / 1e6}
	switch o.Event {
	case SeedStateChanged:
		j.FromState, j.ToState = string(o.From), string(o.To)
	case SeedAlphaChanged:
		a, c := o.Alpha, o.Clamped
		j.Alpha, j.Clamped = &a, &c
	case KernelLoadFailed, CommandFailed:
		j.ErrorClass = o.ErrorClass.String()
		if o.Command == oona.CommandSetSeedState {
			j.ToState = string(o.To)
		}
	}
	if trace {
		j.TraceID = o.Origin.TraceID
	}
	return j
}

// AppendJSON appends the outcome event's payload (oona.Payload).
func (o *Outcome) AppendJSON(dst []byte) []byte {
	b, err := json.Marshal(o.wire(false))
	if err != nil {
		// Unreachable: Validate refuses what json cannot write.
		return append(dst, `{}`...)
	}
	return append(dst, b...)
}

// Validate checks what the payload's JSON needs (oona.Payload).
func (o *Outcome) Validate() error {
	if math.IsNaN(o.Alpha) || math.IsInf(o.Alpha, 0) {
		return fmt.Errorf("outcome alpha %v is not finite", o.Alpha)
	}
	if o.Event == 0 {
		return fmt.Errorf("outcome without an event")
	}
	return nil
}

// MarshalJSON writes the outcome as the event's payload does, with the
// command's trace_id: a front end's answer.
func (o Outcome) MarshalJSON() ([]byte, error) { return json.Marshal(o.wire(true)) }
