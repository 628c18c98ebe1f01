package runtime

import (
	"log/slog"
	"sort"

	"github.com/esper/kasmina-host/runtime/placement"
)

// replan moves kernels off devices that can no longer hold them: devices
// that turned unhealthy or invisible, and devices whose live free memory
// dropped below the host's outstanding reservations plus headroom. Each
// move is planned without the device being left and recorded. It returns
// the moves made.
func (h *Host) replan() []Move {
	devs := devices(h.inv.Snapshot())
	h.mu.RLock()
	ls := make([]*loaded, 0, len(h.kernels))
	for _, l := range h.kernels {
		ls = append(ls, l)
	}
	h.mu.RUnlock()
	sort.Slice(ls, func(i, j int) bool { return ls[i].loadedAt.After(ls[j].loadedAt) }) // newest first

	var moves []Move
	for _, l := range ls {
		l.mu.Lock()
		cur := l.decision
		l.mu.Unlock()
		cause, why := h.planner.MustLeave(cur.Device, devs, h.ledger)
		if cause == placement.Stay {
			continue
		}
		// Plan without the device being left.
		others := make([]placement.Device, 0, len(devs))
		for _, o := range devs {
			if o.Name != cur.Device {
				others = append(others, o)
			}
		}
		dec, err := h.ledger.Move(h.planner, l.key, h.placementRequest(l), others)
		if err != nil {
			h.log.Error("kernel cannot be re-placed; it keeps executing on the CPU", slog.String("kernel", l.name),
				slog.String("from", cur.Device), slog.String("why", why), slog.Any("err", err))
			continue
		}
		mv := Move{At: h.cfg.Now(), From: cur.Device, To: dec.Device, Reason: why}
		l.setDecision(dec)
		l.mu.Lock()
		l.moves = append(l.moves, mv)
		if len(l.moves) > 32 {
			l.moves = l.moves[len(l.moves)-32:]
		}
		l.mu.Unlock()
		h.metrics.replacements.WithLabelValues(mv.From, mv.To, cause.Label()).Inc()
		h.metrics.moveKernel(l.name, cur.Device, dec.Device, dec.EstimateMiB)
		l.obs.Store(h.metrics.kernel(l.name, dec.Device, l.route.Load().exec.Name()))
		if dec.Fallback {
			h.metrics.fallbacks.WithLabelValues(l.name, dec.Shortfall.Label()).Inc()
		}
		h.log.Warn("kernel re-placed", slog.String("kernel", l.name), slog.String("from", mv.From),
			slog.String("to", mv.To), slog.String("reason", why))
		moves = append(moves, mv)
	}
	if len(moves) > 0 {
		h.changeMu.Lock()
		if err := h.saveChange(); err != nil {
			h.log.Error("re-placements not saved", slog.Int("moves", len(moves)), slog.Any("err", err))
		}
		h.changeMu.Unlock()
	}
	return moves
}
