package oona

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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
)

// ErrBadCommand is returned (wrapped, naming the field) for a payload that
// is not a valid command; such entries are dead-lettered.
var ErrBadCommand = errors.New("oona: bad command")

// CommandPayload is the typed payload of one command: *LoadKernel,
// *UnloadKernel, *SetSeedState or *SetAlpha.
type CommandPayload interface {
	// CommandName is the wire name in the payload's "command" member.
	CommandName() string
	// Target is the layer and seed the command is for.
	Target() (layerName string, seedIdx int)
}

// LoadKernel asks the host to load a compiled kernel into a seed:
// {"command":"load_kernel","layer_name":"layer1","seed_idx":0,"artifact_id":"kernel-abc123"}.
type LoadKernel struct {
	LayerName  string `json:"layer_name"`
	SeedIdx    int    `json:"seed_idx"`
	ArtifactID string `json:"artifact_id"`
}

// UnloadKernel asks the host to unload a seed's kernel:
// {"command":"unload_kernel","layer_name":"layer1","seed_idx":0}.
type UnloadKernel struct {
	LayerName string `json:"layer_name"`
	SeedIdx   int    `json:"seed_idx"`
}

// SetSeedState moves a seed through its lifecycle (germinate = "germinated",
// cull = "culled", ...): {"command":"set_seed_state","layer_name":"layer1",
// "seed_idx":0,"state":"training"}. The runtime enforces the contract's
// transition table; a refused transition is a permanent error.
type SetSeedState struct {
	LayerName string              `json:"layer_name"`
	SeedIdx   int                 `json:"seed_idx"`
	State     contracts.SeedState `json:"state"`
}

// SetAlpha sets a seed's blending factor while grafting, 0 (seed output
// ignored) to 1 (seed output only): {"command":"set_alpha",
// "layer_name":"layer1","seed_idx":0,"alpha":0.25}.
type SetAlpha struct {
	LayerName string  `json:"layer_name"`
	SeedIdx   int     `json:"seed_idx"`
	Alpha     float64 `json:"alpha"`
}

// CommandName implements CommandPayload.
func (*LoadKernel) CommandName() string { return CommandLoadKernel }

// CommandName implements CommandPayload.
func (*UnloadKernel) CommandName() string { return CommandUnloadKernel }

// CommandName implements CommandPayload.
func (*SetSeedState) CommandName() string { return CommandSetSeedState }

// CommandName implements CommandPayload.
func (*SetAlpha) CommandName() string { return CommandSetAlpha }

// Target implements CommandPayload.
func (c *LoadKernel) Target() (string, int) { return c.LayerName, c.SeedIdx }

// Target implements CommandPayload.
func (c *UnloadKernel) Target() (string, int) { return c.LayerName, c.SeedIdx }

// Target implements CommandPayload.
func (c *SetSeedState) Target() (string, int) { return c.LayerName, c.SeedIdx }

// Target implements CommandPayload.
func (c *SetAlpha) Target() (string, int) { return c.LayerName, c.SeedIdx }

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
// called concurrently for commands of different seeds (layer_name,
// seed_idx), and one at a time, in order, for the same seed.
// HandleCommand must be idempotent: delivery is at least once, and the
// event_id de-duplication is bounded.
type CommandHandler interface {
	// ServesLayer reports whether this host serves layerName; commands
	// for other layers are acknowledged and counted as skipped.
	ServesLayer(layerName string) bool
	// HandleCommand executes cmd before ctx's deadline (the consumer's
	// CommandTimeout). nil acknowledges it; an error whose failure class
	// is permanent (failure.Class.Permanent) dead-letters it; any other
	// error, an unclassified one included, leaves it pending for another
	// delivery.
	HandleCommand(ctx context.Context, cmd Command) error
}

// ParseCommand decodes a command payload (the JSON object in the payload
// field) into its typed form, naming the field that is wrong. Members not
// listed for a command are ignored, as Pydantic does by default.
func ParseCommand(payload []byte) (CommandPayload, error) {
	var head struct {
		Command   *string      `json:"command"`
		LayerName *string      `json:"layer_name"`
		SeedIdx   *json.Number `json:"seed_idx"`
		Artifact  *string      `json:"artifact_id"`
		State     *string      `json:"state"`
		Alpha     *json.Number `json:"alpha"`
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&head); err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrBadCommand, err)
	}
	if head.Command == nil {
		return nil, fmt.Errorf("%w: payload.command missing", ErrBadCommand)
	}
	name := *head.Command
	known := []string{CommandLoadKernel, CommandUnloadKernel, CommandSetSeedState, CommandSetAlpha}
	if !slices.Contains(known, name) {
		return nil, fmt.Errorf("%w: payload.command %q unknown, want one of %s", ErrBadCommand, name, strings.Join(known, ", "))
	}
	if head.LayerName == nil || strings.TrimSpace(*head.LayerName) == "" {
		return nil, fmt.Errorf("%w: payload.layer_name missing or empty", ErrBadCommand)
	}
	if head.SeedIdx == nil {
		return nil, fmt.Errorf("%w: payload.seed_idx missing", ErrBadCommand)
	}
	seed, err := head.SeedIdx.Int64()
	if err != nil {
		f, ferr := head.SeedIdx.Float64()
		if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<31 {
			return nil, fmt.Errorf("%w: payload.seed_idx %s is not an integer", ErrBadCommand, head.SeedIdx.String())
		}
		seed = int64(f)
	}
	if seed < 0 || seed > math.MaxInt32 {
		return nil, fmt.Errorf("%w: payload.seed_idx %d out of range 0..%d", ErrBadCommand, seed, math.MaxInt32)
	}
	layer := *head.LayerName
	switch name {
	case CommandLoadKernel:
		if head.Artifact == nil || strings.TrimSpace(*head.Artifact) == "" {
			return nil, fmt.Errorf("%w: payload.artifact_id missing or empty", ErrBadCommand)
		}
		return &LoadKernel{LayerName: layer, SeedIdx: int(seed), ArtifactID: *head.Artifact}, nil
	case CommandUnloadKernel:
		return &UnloadKernel{LayerName: layer, SeedIdx: int(seed)}, nil
	case CommandSetSeedState:
		if head.State == nil {
			return nil, fmt.Errorf("%w: payload.state missing", ErrBadCommand)
		}
		st := contracts.SeedState(*head.State)
		if !slices.Contains(contracts.SeedStates, st) {
			return nil, fmt.Errorf("%w: payload.state %q is not a seed state", ErrBadCommand, *head.State)
		}
		return &SetSeedState{LayerName: layer, SeedIdx: int(seed), State: st}, nil
	default: // CommandSetAlpha
		if head.Alpha == nil {
			return nil, fmt.Errorf("%w: payload.alpha missing", ErrBadCommand)
		}
		a, err := head.Alpha.Float64()
		if err != nil || math.IsNaN(a) || a < 0 || a > 1 {
			return nil, fmt.Errorf("%w: payload.alpha %s out of range 0..1", ErrBadCommand, head.Alpha.String())
		}
		return &SetAlpha{LayerName: layer, SeedIdx: int(seed), Alpha: a}, nil
	}
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
