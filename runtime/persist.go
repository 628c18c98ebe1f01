package runtime

import "github.com/esper/kasmina-host/runtime/failure"

// saveChange saves the state after a change; the caller holds changeMu.
// Its error (class Unavailable, naming the store's) refuses the change,
// which the caller undoes. Nothing is saved while Restore runs.
func (h *Host) saveChange() error {
	if h.store == nil || h.restoring.Load() {
		return nil
	}
	if err := h.store.Save(h.State()); err != nil {
		return failure.Errorf(failure.Unavailable, "the change was undone because the state could not be saved: %w", err)
	}
	return nil
}

// saveNow saves the state outside a change (start-up, a retry,
// shutdown), with no change half made.
func (h *Host) saveNow() error {
	if h.store == nil {
		return nil
	}
	h.changeMu.Lock()
	defer h.changeMu.Unlock()
	return h.store.Save(h.State())
}
