package runtime

import (
	"context"
	"log/slog"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

// Seeds lists every seed, by layer id then seed index.
func (h *Host) Seeds() []SeedView { return h.book.seedViews(h.cfg.Now(), h.cfg.GraftingRamp) }

// Layers lists the layer mapping, by id.
func (h *Host) Layers() []LayerView { return h.book.layerViews() }

// RegisterLayer declares a layer this host serves (so commands for it are
// accepted before any kernel is loaded) and returns its layer id. A new
// layer is saved through the change hook; when that fails the layer is not
// registered and the error says why.
func (h *Host) RegisterLayer(name string) (int, error) {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	if id, ok := h.book.layerID(name); ok {
		return id, nil
	}
	id, undo := h.book.declare(name)
	if err := h.saveChange(); err != nil {
		undo()
		return -1, err
	}
	return id, nil
}

// SetSeedState moves a seed through its lifecycle under the contract's
// transition table. When the change hook fails, the seed keeps its state
// and the error says why.
func (h *Host) SetSeedState(layer string, idx int, to contracts.SeedState, why string) error {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	_, undo, err := h.book.setState(seedKey{layer, idx}, to, why, h.cfg.Now())
	return h.commit(undo, err)
}

// SetAlpha sets a seed's blend factor, clamped to [0, 1]; while grafting
// the ramp restarts from it. When the change hook fails, the seed keeps
// its alpha and the error says why.
func (h *Host) SetAlpha(layer string, idx int, alpha float64) error {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	undo, err := h.book.setAlpha(seedKey{layer, idx}, alpha, h.cfg.Now())
	return h.commit(undo, err)
}

// commit saves a change made (err nil) or returns err; a change that
// cannot be saved is undone. The caller holds changeMu.
func (h *Host) commit(undo func(), err error) error {
	if err != nil {
		return err
	}
	if err := h.saveChange(); err != nil {
		undo()
		return err
	}
	return nil
}

// ServesLayer reports whether this host serves the layer: it has
// registered it (a kernel was loaded into it, or it was declared).
func (h *Host) ServesLayer(name string) bool {
	_, ok := h.book.layerID(name)
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
func (h *Host) HandleCommand(ctx context.Context, cmd oona.Command) error {
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
