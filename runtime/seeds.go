package runtime

import (
	"github.com/esper/kasmina-host/contracts"
)

// Seeds lists every seed, by layer id then seed index.
func (h *Host) Seeds() []SeedView { return h.book.seedViews(h.cfg.Now(), h.cfg.GraftingRamp) }

// Layers lists the layer mapping, by id.
func (h *Host) Layers() []LayerView { return h.book.layerViews() }

// RegisterLayer declares a layer this host serves (so commands for it are
// accepted before any kernel is loaded) and returns its layer id. A new
// layer is saved in the state store; when that fails the layer is not
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
// transition table. When the state store cannot save it, the seed keeps its state
// and the error says why.
func (h *Host) SetSeedState(layer string, idx int, to contracts.SeedState, why string) error {
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	_, undo, err := h.book.setState(seedKey{layer, idx}, to, why, h.cfg.Now())
	return h.commit(undo, err)
}

// SetAlpha sets a seed's blend factor, clamped to [0, 1]; while grafting
// the ramp restarts from it. When the state store cannot save it, the seed keeps
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
