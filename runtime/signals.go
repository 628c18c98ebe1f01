package runtime

import (
	"log/slog"
	"sort"
	"strconv"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/health"
)

// emitSignals turns every seed window that saw calls into a HealthSignal,
// keeps it as the seed's latest and publishes it. It returns the signals
// emitted. Run calls it every SignalInterval.
func (h *Host) emitSignals() []contracts.HealthSignal {
	now := h.cfg.Now()
	epoch := int(h.epoch.Load())

	h.mu.RLock()
	ls := make([]*loaded, 0, len(h.kernels))
	for _, l := range h.kernels {
		ls = append(ls, l)
	}
	h.mu.RUnlock()
	sort.Slice(ls, func(i, j int) bool { return ls[i].name < ls[j].name })

	var out []contracts.HealthSignal
	h.emitMu.Lock() // one emitter at a time: chunk ids are read, then advanced
	defer h.emitMu.Unlock()
	for _, l := range ls {
		bi, ok := h.book.signalInputs(l.seed, l.name)
		if !ok {
			continue
		}
		in := health.Inputs{
			LayerID: bi.layerID, SeedIdx: l.seed.idx, ChunkID: bi.chunkID, Epoch: epoch,
			ActiveSeeds: bi.active, TotalSeeds: max(bi.total, 1), State: bi.state, ExpectedLatency: l.expected, Now: now,
		}
		sig, sum, ok := l.window.Signal(in)
		if !ok {
			continue
		}
		if err := sig.Validate(); err != nil {
			// A signal the contract refuses would be refused by every
			// consumer too: log it loudly rather than publish it.
			h.log.Error("health signal fails the contract; not published", slog.String("kernel", l.name), slog.Any("err", err))
			h.metrics.signalsInvalid.Inc()
			continue
		}
		h.book.signalled(l.seed, l.name, sig)

		out = append(out, sig)
		h.metrics.observeSignal(l.seed.layer, l.seed.idx, l.name, &sig, sum)
		if h.pub != nil {
			err := h.pub.PublishPayload(contracts.TopicTelemetrySeedHealth, h.senderID(), traceID(l.seed.layer, l.seed.idx, l.name), &sig)
			if err != nil {
				h.log.Warn("health signal not published", slog.String("kernel", l.name), slog.Any("err", err))
			}
		}
	}
	return out
}

// Signals returns each seed's latest health signal, by layer id then seed.
func (h *Host) Signals() []contracts.HealthSignal { return h.book.latestSignals() }

// senderID is the OonaMessage sender_id for this host. It starts with a
// letter, so Python's json.loads never turns it into another type.
func (h *Host) senderID() string { return "kasmina-host." + h.cfg.HostID }

// traceID names the seed and kernel a signal comes from:
// "<layer name>/<seed index>/<kernel>".
func traceID(layer string, idx int, kernel string) string {
	return layer + "/" + strconv.Itoa(idx) + "/" + kernel
}
