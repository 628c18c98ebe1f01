package runtime

import (
	"context"
	"log/slog"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// commandHandler is the host as the bus's command consumer sees it
// (oona.CommandHandler): Run hands it to Bus.ConsumeCommands. Each
// command is an Op that Apply performs.
type commandHandler struct{ h *Host }

// ServesLayer reports whether this host serves the layer: it has
// registered it (a kernel was loaded into it, or it was declared).
func (c commandHandler) ServesLayer(name string) bool {
	_, ok := c.h.book.layerID(name)
	return ok
}

// HandleCommand executes a control.kasmina.commands command. Its error
// carries a failure class, which decides what the bus consumer does: a
// permanent class (failure.Class.Permanent) dead-letters the command at
// once, any other leaves it pending for another delivery.
func (c commandHandler) HandleCommand(ctx context.Context, cmd oona.Command) error {
	log := c.h.log.With(slog.String("event_id", cmd.Message.EventID), slog.String("command", cmd.Payload.CommandName()))
	var err error
	if op := opOf(cmd); op == nil {
		err = failure.Errorf(failure.Unsupported, "unknown command %q", cmd.Payload.CommandName())
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

// opOf is the Op a command asks for, nil for a command the host does not
// know.
func opOf(cmd oona.Command) Op {
	switch p := cmd.Payload.(type) {
	case *oona.LoadKernel:
		return LoadKernel{Layer: p.LayerName, SeedIdx: p.SeedIdx, Artifact: p.ArtifactID}
	case *oona.UnloadKernel:
		return UnloadKernel{Layer: p.LayerName, SeedIdx: p.SeedIdx}
	case *oona.SetSeedState:
		return SetSeedState{Layer: p.LayerName, SeedIdx: p.SeedIdx, State: p.State, Why: "command " + cmd.Message.EventID}
	case *oona.SetAlpha:
		return SetAlpha{Layer: p.LayerName, SeedIdx: p.SeedIdx, Alpha: p.Alpha}
	}
	return nil
}
