package runtime

import (
	"log/slog"
	"sort"
	"strconv"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/health"
)

// EmitSignals turns every seed window that saw calls into a HealthSignal,
// keeps it as the seed's latest and publishes it. It returns the signals
// emitted. Run calls it every SignalInterval.
func (h *Host) EmitSignals() []contracts.HealthSignal {
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
	for _, l := range ls {
		h.mu.Lock()
		s, ok := h.seeds.seeds[l.seed]
		if !ok || s.kernel != l.name {
			h.mu.Unlock()
			continue
		}
		active, total := h.layerCountsLocked(l.seed.layer)
		in := health.Inputs{
			LayerID: s.LayerID, SeedIdx: l.seed.idx, ChunkID: s.signals, Epoch: epoch,
			ActiveSeeds: active, TotalSeeds: total, State: s.State, ExpectedLatency: l.expected, Now: now,
		}
		sig, sum, ok := l.window.Signal(in)
		if !ok {
			h.mu.Unlock()
			continue
		}
		if err := sig.Validate(); err != nil {
			// A signal the contract refuses would be refused by every
			// consumer too: log it loudly rather than publish it.
			h.mu.Unlock()
			h.log.Error("health signal fails the contract; not published", slog.String("kernel", l.name), slog.Any("err", err))
			h.metrics.signalsInvalid.Inc()
			continue
		}
		s.signals++
		latest := sig
		s.latest = &latest
		h.mu.Unlock()

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

// layerCountsLocked counts a layer's seeds and its active ones (training or
// grafting, as Seed.is_active says). The caller holds h.mu.
func (h *Host) layerCountsLocked(layer string) (active, total int) {
	for k, s := range h.seeds.seeds {
		if k.layer != layer {
			continue
		}
		total++
		if s.IsActive() {
			active++
		}
	}
	return active, max(total, 1)
}

// LatestSignals returns each seed's latest signal, by layer id then seed.
func (h *Host) LatestSignals() []contracts.HealthSignal {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []contracts.HealthSignal
	for _, s := range h.seeds.seeds {
		if s.latest != nil {
			out = append(out, *s.latest)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].LayerID != out[j].LayerID {
			return out[i].LayerID < out[j].LayerID
		}
		return out[i].SeedID < out[j].SeedID
	})
	return out
}

// senderID is the OonaMessage sender_id for this host. It starts with a
// letter, so Python's json.loads never turns it into another type.
func (h *Host) senderID() string { return "kasmina-host." + h.cfg.HostID }

// traceID names the seed and kernel a signal comes from:
// "<layer name>/<seed index>/<kernel>".
func traceID(layer string, idx int, kernel string) string {
	return layer + "/" + strconv.Itoa(idx) + "/" + kernel
}
