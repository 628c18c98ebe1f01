package device

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"
)

// healthBook keeps every device's health history and whether the backend is
// stalled, and decides the health each device shows. Its rules are the
// hysteresis: a fault takes effect at once and never lowers a worse state;
// a faulty device comes back only after quietPeriod without a new fault and a
// passing probe, probes spaced probeInterval apart; and while the backend is
// stalled its healthy and degraded accelerators show as unknown. It holds no
// backend: the inventory reads the hardware and tells the book what it saw.
// It is safe for concurrent use.
type healthBook struct {
	clock         Clock
	policy        XidPolicy
	quietPeriod   time.Duration
	probeInterval time.Duration
	log           *slog.Logger

	mu         sync.Mutex // guards everything below
	tracks     map[string]*track
	stallCall  string // the hung backend call, "" while calls answer
	stallWatch string // why the event watch fails, "" while it works
	stallSince time.Time
}

// track is one device's health history.
type track struct {
	base      Health
	lastFault time.Time
	lastProbe time.Time
	xids      map[uint64]uint64
}

func newHealthBook(clock Clock, policy XidPolicy, quietPeriod, probeInterval time.Duration, log *slog.Logger) *healthBook {
	return &healthBook{clock: clock, policy: policy, quietPeriod: quietPeriod, probeInterval: probeInterval, log: log,
		tracks: map[string]*track{}}
}

// state returns the device's recorded state, stalls aside: healthy for a
// device the book has not seen.
func (b *healthBook) state(uuid string) HealthState {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t := b.tracks[uuid]; t != nil {
		return t.base.State
	}
	return HealthHealthy
}

// trackLocked returns the device's track, creating a healthy one.
func (b *healthBook) trackLocked(uuid string) *track {
	t := b.tracks[uuid]
	if t == nil {
		t = &track{base: Health{State: HealthHealthy, Since: b.clock.Now()}, xids: map[uint64]uint64{}}
		b.tracks[uuid] = t
	}
	return t
}

// fault records a fault on each device: its quiet period restarts, and its
// state moves to h unless it is already in a worse state.
func (b *healthBook) fault(h Health, uuids ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range uuids {
		b.faultLocked(u, h)
	}
}

func (b *healthBook) faultLocked(uuid string, h Health) {
	t := b.trackLocked(uuid)
	now := b.clock.Now()
	t.lastFault = now
	if h.State.rank() < t.base.State.rank() {
		return
	}
	if h.State != t.base.State {
		h.Since = now
	} else {
		h.Since = t.base.Since
	}
	t.base = h
}

// Healths the backend's events and failed reads leave a device in.
var (
	healthDoubleBitECC = Health{State: HealthUnhealthy, Reason: "uncorrectable (double-bit) ECC error", Action: "move work off this GPU and reset it"}
	healthLost         = Health{State: HealthLost, Reason: "GPU has fallen off the bus (ERROR_GPU_IS_LOST)", Action: "move work off this GPU; reset it or reboot the node"}
)

// event records one backend event on the devices it targets. Every Xid is
// counted; only those the policy does not ignore are faults.
func (b *healthBook) event(ev RawEvent, targets []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev.Type {
	case RawXid:
		for _, u := range targets {
			b.trackLocked(u).xids[ev.Xid]++
		}
		if b.policy.Ignored(ev.Xid) {
			b.log.Debug("application Xid ignored", slog.Uint64("xid", ev.Xid), slog.String("uuid", ev.UUID))
			return
		}
		h := ClassifyXid(ev.Xid)
		for _, u := range targets {
			b.faultLocked(u, h)
		}
	case RawDoubleBitECC:
		for _, u := range targets {
			b.faultLocked(u, healthDoubleBitECC)
		}
	case RawLost:
		for _, u := range targets {
			b.faultLocked(u, healthLost)
		}
	}
}

// dueForProbe returns, in order, the devices among devs that are faulty,
// whose quiet period is over and whose last probe is at least probeInterval
// old, and stamps them probed. at is when, for probed.
func (b *healthBook) dueForProbe(devs []Device) (due []Device, at time.Time) {
	now := b.clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range devs {
		t := b.tracks[d.UUID]
		if t == nil || t.base.State == HealthHealthy {
			continue
		}
		if now.Sub(t.lastFault) < b.quietPeriod || now.Sub(t.lastProbe) < b.probeInterval && !t.lastProbe.IsZero() {
			continue
		}
		t.lastProbe = now
		due = append(due, d)
	}
	return due, now
}

// probed records the outcome of a probe that dueForProbe handed out at at: a
// pass brings the device back to healthy unless a fault came after at; a
// failure leaves it as it is.
func (b *healthBook) probed(uuid string, at time.Time, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.trackLocked(uuid)
	if err != nil {
		b.log.Info("device still faulty after its quiet period", slog.String("uuid", uuid), slog.String("state", string(t.base.State)), slog.Any("probe", err))
		return
	}
	if t.lastFault.After(at) {
		return
	}
	t.base = Health{State: HealthHealthy, Since: b.clock.Now(),
		Reason: fmt.Sprintf("recovered: no fault for %s and the probe passed (was %s: %s)", b.quietPeriod, t.base.State, t.base.Reason)}
}

// callFailed records a backend call that failed. Only a stall (ErrStalled)
// counts: until callAnswered, accelerators show as unknown.
func (b *healthBook) callFailed(err error) {
	if !errors.Is(err, ErrStalled) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stallCall == "" {
		b.stallSince = b.clock.Now()
		b.log.Error("NVML call hung; device health is unknown until it answers", slog.Any("err", err))
	}
	b.stallCall = err.Error()
}

// callAnswered records that a backend call returned.
func (b *healthBook) callAnswered() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stallCall != "" {
		b.log.Info("NVML answers again")
	}
	b.stallCall = ""
}

// watchFailed records that the health event watch fails with err: until
// watchAnswered, accelerators show as unknown.
func (b *healthBook) watchFailed(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stallWatch == "" {
		b.stallSince = b.clock.Now()
		b.log.Warn("health event watch failing; device health is unknown", slog.Any("err", err))
	}
	b.stallWatch = "health event watch failing: " + err.Error()
}

// watchAnswered records that the event watch works and reports whether it
// had been failing.
func (b *healthBook) watchAnswered() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	failing := b.stallWatch != ""
	b.stallWatch = ""
	return failing
}

// annotate fills each device's Health, Healthy and XidCounts from the book,
// starting a healthy track for a device it has not seen.
func (b *healthBook) annotate(devs []Device) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range devs {
		d := &devs[i]
		t := b.trackLocked(d.UUID)
		d.Health = b.effectiveLocked(*d, t)
		if d.Health.Since.IsZero() {
			d.Health.Since = t.base.Since
		}
		d.Healthy = d.Health.Healthy()
		d.XidCounts = nil
		if len(t.xids) > 0 {
			d.XidCounts = maps.Clone(t.xids)
		}
	}
}

// effectiveLocked is a device's health as published: a stalled backend
// makes healthy and degraded accelerators unknown.
func (b *healthBook) effectiveLocked(d Device, t *track) Health {
	h := t.base
	if d.Kind == KindCPU {
		return h
	}
	stall := b.stallCall
	if stall == "" {
		stall = b.stallWatch
	}
	if stall != "" && h.State.rank() < HealthUnknown.rank() {
		return Health{State: HealthUnknown, Reason: stall, Action: "place nothing new here; keep existing work", Since: b.stallSince}
	}
	return h
}
