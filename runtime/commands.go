package runtime

import (
	"context"
	"log/slog"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// commandHandler is the host as the bus's command consumer sees it
// (oona.CommandHandler): Run hands it to Bus.ConsumeCommands.
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
//
// load_kernel's artifact_id is a kernel id resolved through Urza, which
// then names the kernel, or a reference (a path, file://, http(s)://,
// s3://), in which case the kernel is named by its kernel_id, else by the
// reference's last path element (see LoadRequest.Name).
func (c commandHandler) HandleCommand(ctx context.Context, cmd oona.Command) error {
	h := c.h
	log := h.log.With(slog.String("event_id", cmd.Message.EventID), slog.String("command", cmd.Payload.CommandName()))
	var err error
	switch p := cmd.Payload.(type) {
	case *oona.LoadKernel:
		// A command redelivered after it was handled is acknowledged.
		if h.seedHolds(seedKey{p.LayerName, p.SeedIdx}, p.ArtifactID) {
			return nil
		}
		req := LoadRequest{Ref: p.ArtifactID, Layer: p.LayerName, SeedIdx: p.SeedIdx}
		if !isReference(p.ArtifactID) {
			req.Name = p.ArtifactID // checked before Urza is asked
		}
		_, err = h.Load(ctx, req)
	case *oona.UnloadKernel:
		kernel := h.book.kernelAt(seedKey{p.LayerName, p.SeedIdx})
		if kernel == "" {
			return nil // nothing attached: already done
		}
		err = h.Unload(ctx, kernel)
	case *oona.SetSeedState:
		err = h.SetSeedState(p.LayerName, p.SeedIdx, p.State, "command "+cmd.Message.EventID)
	case *oona.SetAlpha:
		err = h.SetAlpha(p.LayerName, p.SeedIdx, p.Alpha)
	default:
		err = failure.Errorf(failure.Unsupported, "unknown command %q", cmd.Payload.CommandName())
	}
	if err != nil {
		err = classify(err, failure.Internal)
		log.Warn("command failed", slog.String("class", failure.ClassOf(err).String()), slog.Any("err", err))
		return err
	}
	log.Info("command handled")
	return nil
}

// seedHolds reports whether seed k holds the kernel that artifact (a
// load_kernel artifact_id) names: by name (a kernel id), or by the
// reference it was loaded from.
func (h *Host) seedHolds(k seedKey, artifact string) bool {
	kernel := h.book.kernelAt(k)
	if kernel == "" {
		return false
	}
	h.mu.RLock()
	l, ok := h.kernels[kernel]
	h.mu.RUnlock()
	return ok && (l.name == artifact || l.source == artifact || l.origin == artifact)
}
