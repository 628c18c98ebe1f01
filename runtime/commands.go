package runtime

import (
	"context"
	"log/slog"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// commandHandler is the host as the bus's command consumer sees it
// (oona.CommandHandler): Run hands it to Bus.ConsumeCommands. Each
// command is an Op that Apply performs, which publishes its outcome
// event.
type commandHandler struct{ h *Host }

// ServesLayer says whether this host acts on a command for t's layer: a
// layer it serves (declared, or holding a kernel), by name or by id;
// with Config.AcceptAllLayers, any layer named (the command declares
// it), and any id, which the command then fails on, saying so, since
// the host cannot name the layer.
func (c commandHandler) ServesLayer(t oona.Target) (string, bool) {
	if t.LayerName == "" {
		if name, ok := c.h.book.layerNamed(t.LayerID); ok {
			return name, true
		}
		return "", c.h.cfg.AcceptAllLayers
	}
	if _, ok := c.h.book.layerID(t.LayerName); ok {
		return t.LayerName, true
	}
	return t.LayerName, c.h.cfg.AcceptAllLayers
}

// HandleCommand executes a control.kasmina.commands command. Its error
// carries a failure class, which decides what the bus consumer does: a
// permanent class (failure.Class.Permanent) dead-letters the command at
// once, any other leaves it pending for another delivery.
func (c commandHandler) HandleCommand(ctx context.Context, cmd oona.Command) error {
	p := cmd.Payload
	log := c.h.log.With(slog.String("event_id", cmd.Message.EventID), slog.String("command", p.CommandName()))
	ctx = WithOrigin(ctx, Origin{EventID: cmd.Message.EventID, CommandID: p.CommandID(), TraceID: cmd.Message.TraceID, Command: p.CommandName()})
	op, err := c.opOf(p)
	if err != nil {
		// A command the host cannot act on says so, as a failed one does.
		o := failed(Outcome{Command: p.CommandName(), LayerID: p.Target().LayerID, SeedIdx: p.Target().SeedIdx}, err)
		if cc, ok := p.(*oona.ControlCommand); ok {
			o.Artifact = cc.KernelArtifactID
		}
		c.h.report(ctx, &o)
	} else {
		_, err = c.h.Apply(ctx, op)
	}
	if err != nil {
		log.Warn("command failed", slog.String("class", failure.ClassOf(err).String()), slog.Any("err", err))
		return err
	}
	log.Info("command handled")
	return nil
}

// opOf is the Op a command asks for. A command naming its layer by id
// needs a layer of that id; a command value the host does not act on is
// Unsupported.
func (c commandHandler) opOf(p oona.CommandPayload) (Op, error) {
	switch p := p.(type) {
	case *oona.LoadKernel:
		return LoadKernel{Layer: p.LayerName, SeedIdx: p.SeedIdx, Artifact: p.ArtifactID}, nil
	case *oona.UnloadKernel:
		return UnloadKernel{Layer: p.LayerName, SeedIdx: p.SeedIdx}, nil
	case *oona.SetSeedState:
		return SetSeedState{Layer: p.LayerName, SeedIdx: p.SeedIdx, State: p.State, Why: "command set_seed_state"}, nil
	case *oona.SetAlpha:
		return SetAlpha{Layer: p.LayerName, SeedIdx: p.SeedIdx, Alpha: p.Alpha}, nil
	case *oona.ControlCommand:
		switch p.Command {
		case oona.CommandRequestGermination, oona.CommandCancelGermination:
		default:
			return nil, failure.Errorf(failure.Unsupported, "command %q: the host acts on KasminaControlCommand's %s (load kernel_artifact_id) and %s (unload)",
				p.Command, oona.CommandRequestGermination, oona.CommandCancelGermination)
		}
		layer, ok := c.h.book.layerNamed(p.TargetLayerID)
		if !ok {
			return nil, failure.Errorf(failure.NotFound, "no layer with layer_id %d on this host: a KasminaControlCommand names its layer by id, so the layer must be declared (PUT /v1/layers/{layer_name} with its layer_id, or the stable id of its name)", p.TargetLayerID)
		}
		c.h.log.Debug("KasminaControlCommand", slog.String("layer", layer), slog.String("grafting_strategy", p.GraftingStrategy),
			slog.Any("selected_for_tags", p.SelectedForTags))
		if p.Command == oona.CommandCancelGermination {
			return UnloadKernel{Layer: layer, SeedIdx: p.TargetSeedID}, nil
		}
		return LoadKernel{Layer: layer, SeedIdx: p.TargetSeedID, Artifact: p.KernelArtifactID}, nil
	}
	return nil, failure.Errorf(failure.Unsupported, "unknown command %q", p.CommandName())
}
