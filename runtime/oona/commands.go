package oona

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"

	"github.com/esper/kasmina-host/contracts"
)

// Command names, the "command" member of a control.kasmina.commands payload.
const (
	CommandLoadKernel   = "load_kernel"
	CommandUnloadKernel = "unload_kernel"
	CommandSetSeedState = "set_seed_state"
	CommandSetAlpha     = "set_alpha"
	// The command values of the HLD's KasminaControlCommand the host acts
	// on: request_germination loads kernel_artifact_id into the seed,
	// cancel_germination unloads it.
	CommandRequestGermination = "request_germination"
	CommandCancelGermination  = "cancel_germination"
)

// ErrBadCommand is returned (wrapped, naming the field) for a payload that
// is not a valid command; such entries are dead-lettered.
var ErrBadCommand = errors.New("oona: bad command")

// CommandPayload is the typed payload of one command: *LoadKernel,
// *UnloadKernel, *SetSeedState, *SetAlpha or *ControlCommand.
type CommandPayload interface {
	// CommandName is the wire name in the payload's "command" member.
	CommandName() string
	// Target is the seed the command is for.
	Target() Target
	// CommandID is the command's own id (command_id, or the phase-3
	// plan's decision_id), "" when it has none.
	CommandID() string
}

// Target names the seed a command is for: by layer name, or, for the
// HLD's KasminaControlCommand, by layer id.
type Target struct {
	// LayerName names the layer; "" when the command names it by id.
	LayerName string
	// LayerID is the target_layer_id of a command naming its layer by id,
	// -1 otherwise.
	LayerID int
	SeedIdx int
}

// LoadKernel asks the host to load a compiled kernel into a seed:
// {"command":"load_kernel","layer_name":"layer1","seed_idx":0,"artifact_id":"kernel-abc123"}.
// The phase-3 plan's {"command":"load_kernel","layer_name":…,"kernel_id":…,
// "seed_index":…,"decision_id":…} parses into it too.
type LoadKernel struct {
	LayerName  string `json:"layer_name"`
	SeedIdx    int    `json:"seed_idx"`
	ArtifactID string `json:"artifact_id"`
	ID         string `json:"command_id,omitempty"`
}

// UnloadKernel asks the host to unload a seed's kernel:
// {"command":"unload_kernel","layer_name":"layer1","seed_idx":0}.
type UnloadKernel struct {
	LayerName string `json:"layer_name"`
	SeedIdx   int    `json:"seed_idx"`
	ID        string `json:"command_id,omitempty"`
}

// SetSeedState moves a seed through its lifecycle (germinate = "germinated",
// cull = "culled", ...): {"command":"set_seed_state","layer_name":"layer1",
// "seed_idx":0,"state":"training"}. The runtime enforces the contract's
// transition table; a refused transition is a permanent error.
type SetSeedState struct {
	LayerName string              `json:"layer_name"`
	SeedIdx   int                 `json:"seed_idx"`
	State     contracts.SeedState `json:"state"`
	ID        string              `json:"command_id,omitempty"`
}

// SetAlpha sets a seed's blending factor, 0 (seed output ignored) to 1
// (seed output only): {"command":"set_alpha","layer_name":"layer1",
// "seed_idx":0,"alpha":0.25}. The runtime clamps a value outside [0, 1],
// as esperlite's set_seed_alpha does.
type SetAlpha struct {
	LayerName string  `json:"layer_name"`
	SeedIdx   int     `json:"seed_idx"`
	Alpha     float64 `json:"alpha"`
	ID        string  `json:"command_id,omitempty"`
}

// ControlCommand is the HLD's KasminaControlCommand (ADR-002), which
// names its layer by id: {"target_layer_id":17,"target_seed_id":0,
// "command":"request_germination","kernel_artifact_id":"k-abc",
// "grafting_strategy":"linear","selected_for_tags":null,"command_id":"c-1"}.
// Command request_germination loads KernelArtifactID into the seed,
// cancel_germination unloads it; the host answers any other value with
// a command_failed outcome (class unsupported). GraftingStrategy and
// SelectedForTags are recorded in the log, not acted on.
type ControlCommand struct {
	TargetLayerID    int      `json:"target_layer_id"`
	TargetSeedID     int      `json:"target_seed_id"`
	Command          string   `json:"command"`
	KernelArtifactID string   `json:"kernel_artifact_id"`
	GraftingStrategy string   `json:"grafting_strategy,omitempty"`
	SelectedForTags  []string `json:"selected_for_tags"`
	ID               string   `json:"command_id,omitempty"`
}

// CommandName implements CommandPayload.
func (*LoadKernel) CommandName() string { return CommandLoadKernel }

// CommandName implements CommandPayload.
func (*UnloadKernel) CommandName() string { return CommandUnloadKernel }

// CommandName implements CommandPayload.
func (*SetSeedState) CommandName() string { return CommandSetSeedState }

// CommandName implements CommandPayload.
func (*SetAlpha) CommandName() string { return CommandSetAlpha }

// CommandName implements CommandPayload: the payload's command value.
func (c *ControlCommand) CommandName() string { return c.Command }

func byName(layer string, idx int) Target { return Target{LayerName: layer, LayerID: -1, SeedIdx: idx} }

// Target implements CommandPayload.
func (c *LoadKernel) Target() Target { return byName(c.LayerName, c.SeedIdx) }

// Target implements CommandPayload.
func (c *UnloadKernel) Target() Target { return byName(c.LayerName, c.SeedIdx) }

// Target implements CommandPayload.
func (c *SetSeedState) Target() Target { return byName(c.LayerName, c.SeedIdx) }

// Target implements CommandPayload.
func (c *SetAlpha) Target() Target { return byName(c.LayerName, c.SeedIdx) }

// Target implements CommandPayload.
func (c *ControlCommand) Target() Target {
	return Target{LayerID: c.TargetLayerID, SeedIdx: c.TargetSeedID}
}

// CommandID implements CommandPayload.
func (c *LoadKernel) CommandID() string { return c.ID }

// CommandID implements CommandPayload.
func (c *UnloadKernel) CommandID() string { return c.ID }

// CommandID implements CommandPayload.
func (c *SetSeedState) CommandID() string { return c.ID }

// CommandID implements CommandPayload.
func (c *SetAlpha) CommandID() string { return c.ID }

// CommandID implements CommandPayload.
func (c *ControlCommand) CommandID() string { return c.ID }

// Command is one decoded control.kasmina.commands entry.
type Command struct {
	// StreamID is the Redis stream entry ID ("" on the embedded bus).
	StreamID string
	// Message is the envelope (event_id, sender_id, trace_id, timestamp).
	Message contracts.OonaMessage
	// Payload is the typed command.
	Payload CommandPayload
}

// CommandHandler executes commands for the layers a host serves. It is
// called concurrently for commands of different seeds (layer, seed
// index), and one at a time, in order, for the same seed.
// HandleCommand must be idempotent: delivery is at least once, and the
// event_id de-duplication is bounded.
type CommandHandler interface {
	// ServesLayer says whether this host acts on commands for t's layer,
	// and names it: t's layer name, or the name of the layer whose id t
	// gives ("" when the host acts on an id it does not know, to say so).
	// Commands for other layers are acknowledged and counted as skipped.
	ServesLayer(t Target) (layer string, ok bool)
	// HandleCommand executes cmd before ctx's deadline (the consumer's
	// CommandTimeout). nil acknowledges it; an error whose failure class
	// is permanent (failure.Class.Permanent) dead-letters it; any other
	// error, an unclassified one included, leaves it pending for another
	// delivery.
	HandleCommand(ctx context.Context, cmd Command) error
}

// commandHead is every member a command payload may have, in any of the
// shapes ParseCommand reads. The numbers are read by number, which names
// the member when one is not a number.
type commandHead struct {
	Command   *string         `json:"command"`
	LayerName *string         `json:"layer_name"`
	SeedIdx   json.RawMessage `json:"seed_idx"`
	SeedIndex json.RawMessage `json:"seed_index"`
	Artifact  *string         `json:"artifact_id"`
	KernelID  *string         `json:"kernel_id"`
	State     *string         `json:"state"`
	Alpha     json.RawMessage `json:"alpha"`
	// Ids: command_id, or the phase-3 plan's decision_id.
	CommandID  *string `json:"command_id"`
	DecisionID *string `json:"decision_id"`
	// The HLD's KasminaControlCommand.
	TargetLayerID    json.RawMessage `json:"target_layer_id"`
	TargetSeedID     json.RawMessage `json:"target_seed_id"`
	KernelArtifactID *string         `json:"kernel_artifact_id"`
	GraftingStrategy *string         `json:"grafting_strategy"`
	SelectedForTags  []string        `json:"selected_for_tags"`
}

// ParseCommand decodes a command payload (the JSON object in the payload
// field) into its typed form, naming the member that is wrong. It reads
// three shapes (runtime/oona/COMMANDS.md): the host's own
// ({"command", "layer_name", "seed_idx", ...}), the phase-3 plan's
// (kernel_id for artifact_id, seed_index for seed_idx, decision_id for
// command_id) and the HLD's KasminaControlCommand (target_layer_id,
// target_seed_id, kernel_artifact_id, command_id). Members not listed for
// a command are ignored, as Pydantic does by default.
func ParseCommand(payload []byte) (CommandPayload, error) {
	var head commandHead
	if err := json.Unmarshal(payload, &head); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, fmt.Errorf("%w: payload.%s is a JSON %s, want a %s", ErrBadCommand, te.Field, te.Value, jsonKind(te.Type.Kind()))
		}
		return nil, fmt.Errorf("%w: payload: %w", ErrBadCommand, err)
	}
	if head.Command == nil {
		return nil, fmt.Errorf("%w: payload.command missing", ErrBadCommand)
	}
	id, err := either(head.CommandID, head.DecisionID, "command_id", "decision_id")
	if err != nil {
		return nil, err
	}
	if head.TargetLayerID != nil || head.TargetSeedID != nil {
		if head.LayerName != nil {
			return nil, fmt.Errorf("%w: payload has both layer_name and target_layer_id; give one", ErrBadCommand)
		}
		return parseControl(&head, id)
	}
	name := *head.Command
	known := []string{CommandLoadKernel, CommandUnloadKernel, CommandSetSeedState, CommandSetAlpha}
	if !slices.Contains(known, name) {
		return nil, fmt.Errorf("%w: payload.command %q unknown, want one of %s (or a KasminaControlCommand with target_layer_id)", ErrBadCommand, name, strings.Join(known, ", "))
	}
	if head.LayerName == nil || strings.TrimSpace(*head.LayerName) == "" {
		return nil, fmt.Errorf("%w: payload.layer_name missing or empty", ErrBadCommand)
	}
	idx, err := number("seed_idx", head.SeedIdx)
	if err != nil {
		return nil, err
	}
	index, err := number("seed_index", head.SeedIndex)
	if err != nil {
		return nil, err
	}
	member := "seed_idx"
	if idx == nil {
		idx, member = index, "seed_index"
	} else if index != nil && index.String() != idx.String() {
		return nil, fmt.Errorf("%w: payload.seed_idx %s and payload.seed_index %s differ", ErrBadCommand, idx, index)
	}
	if idx == nil {
		return nil, fmt.Errorf("%w: payload.seed_idx missing", ErrBadCommand)
	}
	seed, err := nonNegativeInt(member, *idx)
	if err != nil {
		return nil, err
	}
	layer := *head.LayerName
	switch name {
	case CommandLoadKernel:
		artifact, err := either(head.Artifact, head.KernelID, "artifact_id", "kernel_id")
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(artifact) == "" {
			return nil, fmt.Errorf("%w: payload.artifact_id missing or empty", ErrBadCommand)
		}
		return &LoadKernel{LayerName: layer, SeedIdx: seed, ArtifactID: artifact, ID: id}, nil
	case CommandUnloadKernel:
		return &UnloadKernel{LayerName: layer, SeedIdx: seed, ID: id}, nil
	case CommandSetSeedState:
		if head.State == nil {
			return nil, fmt.Errorf("%w: payload.state missing", ErrBadCommand)
		}
		st := contracts.SeedState(*head.State)
		if !slices.Contains(contracts.SeedStates, st) {
			return nil, fmt.Errorf("%w: payload.state %q is not a seed state", ErrBadCommand, *head.State)
		}
		return &SetSeedState{LayerName: layer, SeedIdx: seed, State: st, ID: id}, nil
	default: // CommandSetAlpha
		alpha, err := number("alpha", head.Alpha)
		if err != nil {
			return nil, err
		}
		if alpha == nil {
			return nil, fmt.Errorf("%w: payload.alpha missing", ErrBadCommand)
		}
		a, err := alpha.Float64()
		if err != nil || math.IsNaN(a) || math.IsInf(a, 0) {
			return nil, fmt.Errorf("%w: payload.alpha %s is not a finite number", ErrBadCommand, alpha.String())
		}
		return &SetAlpha{LayerName: layer, SeedIdx: seed, Alpha: a, ID: id}, nil
	}
}

// parseControl reads the HLD's KasminaControlCommand.
func parseControl(head *commandHead, id string) (CommandPayload, error) {
	layerID, err := number("target_layer_id", head.TargetLayerID)
	if err != nil {
		return nil, err
	}
	seedID, err := number("target_seed_id", head.TargetSeedID)
	if err != nil {
		return nil, err
	}
	if layerID == nil {
		return nil, fmt.Errorf("%w: payload.target_layer_id missing", ErrBadCommand)
	}
	if seedID == nil {
		return nil, fmt.Errorf("%w: payload.target_seed_id missing", ErrBadCommand)
	}
	layer, err := nonNegativeInt("target_layer_id", *layerID)
	if err != nil {
		return nil, err
	}
	seed, err := nonNegativeInt("target_seed_id", *seedID)
	if err != nil {
		return nil, err
	}
	c := &ControlCommand{TargetLayerID: layer, TargetSeedID: seed, Command: *head.Command, ID: id, SelectedForTags: head.SelectedForTags}
	if head.KernelArtifactID != nil {
		c.KernelArtifactID = *head.KernelArtifactID
	}
	if head.GraftingStrategy != nil {
		c.GraftingStrategy = *head.GraftingStrategy
	}
	if c.Command == CommandRequestGermination && strings.TrimSpace(c.KernelArtifactID) == "" {
		return nil, fmt.Errorf("%w: payload.kernel_artifact_id missing or empty", ErrBadCommand)
	}
	return c, nil
}

// number reads a numeric member, nil when it is absent or null; a
// member of another JSON type is refused, naming it.
func number(member string, raw json.RawMessage) (*json.Number, error) {
	if raw == nil || string(raw) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: payload.%s: %w", ErrBadCommand, member, err)
	}
	n, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%w: payload.%s %s is not a number", ErrBadCommand, member, truncate(string(raw), 40))
	}
	return &n, nil
}

// jsonKind names what a Go kind is in JSON, for messages.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "string"
	case reflect.Slice:
		return "list"
	}
	return k.String()
}

// either returns the string of one of two members that mean the same
// (artifact_id and kernel_id, say), refusing both with different values.
func either(a, b *string, aName, bName string) (string, error) {
	switch {
	case a != nil && b != nil && *a != *b:
		return "", fmt.Errorf("%w: payload.%s %q and payload.%s %q differ; give one", ErrBadCommand, aName, *a, bName, *b)
	case a != nil:
		return *a, nil
	case b != nil:
		return *b, nil
	}
	return "", nil
}

// nonNegativeInt reads an index member: an integer (or an integral float,
// as Python writes 2.0) from 0 to 2^31 − 1.
func nonNegativeInt(member string, n json.Number) (int, error) {
	v, err := n.Int64()
	if err != nil {
		f, ferr := n.Float64()
		if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<31 {
			return 0, fmt.Errorf("%w: payload.%s %s is not an integer", ErrBadCommand, member, n.String())
		}
		v = int64(f)
	}
	if v < 0 || v > math.MaxInt32 {
		return 0, fmt.Errorf("%w: payload.%s %d out of range 0..%d", ErrBadCommand, member, v, math.MaxInt32)
	}
	return int(v), nil
}

// CommandMessage builds the OonaMessage that sends p on
// control.kasmina.commands (for tests, tools and the Python compatibility
// check's mirror image).
func CommandMessage(senderID, traceID string, p CommandPayload) (contracts.OonaMessage, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return contracts.OonaMessage{}, err
	}
	var payload map[string]any
	if err := json.Unmarshal(b, &payload); err != nil {
		return contracts.OonaMessage{}, err
	}
	payload["command"] = p.CommandName()
	return contracts.NewOonaMessage(senderID, traceID, contracts.TopicControlKasminaCommands, payload), nil
}
