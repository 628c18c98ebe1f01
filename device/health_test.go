package device

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// The health book alone: a manual clock, no backend, no inventory.

const (
	bookQuiet = 5 * time.Minute
	bookProbe = 30 * time.Second
)

func newTestBook(t *testing.T, policy XidPolicy) (*healthBook, *ManualClock) {
	t.Helper()
	clk := NewManualClock(epoch)
	return newHealthBook(clk, policy, bookQuiet, bookProbe, testLogger(t)), clk
}

func defaultPolicy() XidPolicy {
	p, _ := NewXidPolicy("", "")
	return p
}

// shown is how the book makes devs look in a snapshot, by UUID.
func shown(b *healthBook, devs ...Device) map[string]Device {
	devs = slices.Clone(devs)
	b.annotate(devs)
	out := map[string]Device{}
	for _, d := range devs {
		out[d.UUID] = d
	}
	return out
}

func gpuDev(i int) Device { return Device{Kind: KindGPU, Index: i, UUID: gpuUUID(i)} }

func migDev(j int) Device {
	return Device{Kind: KindMIG, UUID: migUUID(j), MIG: &MIGInfo{ParentUUID: gpuUUID(0), Index: j, GPUInstanceID: uint32(j + 1), ComputeInstanceID: 0}}
}

var (
	cpuDev       = Device{Kind: KindCPU, UUID: CPUUUID}
	degradedXid  = ClassifyXid(94)
	unhealthyXid = ClassifyXid(48)
)

func TestHealthBookFaultsTakeEffectAtOnceAndNeverLower(t *testing.T) {
	type step struct {
		after time.Duration // since the previous step
		h     Health
	}
	cases := []struct {
		name      string
		steps     []step
		want      HealthState
		reason    string
		sinceStep int // the step whose time Health.Since should be
	}{
		{"one fault", []step{{0, unhealthyXid}}, HealthUnhealthy, unhealthyXid.Reason, 0},
		{"worse fault raises", []step{{0, degradedXid}, {time.Second, unhealthyXid}}, HealthUnhealthy, unhealthyXid.Reason, 1},
		{"milder fault does not lower", []step{{0, unhealthyXid}, {time.Second, degradedXid}}, HealthUnhealthy, unhealthyXid.Reason, 0},
		{"lost stays lost", []step{{0, healthLost}, {time.Second, healthDoubleBitECC}}, HealthLost, healthLost.Reason, 0},
		{"same state keeps its start, takes the new reason", []step{{0, unhealthyXid}, {time.Minute, healthDoubleBitECC}}, HealthUnhealthy, healthDoubleBitECC.Reason, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTestBook(t, defaultPolicy())
			var at []time.Time
			for _, s := range tc.steps {
				clk.Advance(s.after)
				at = append(at, clk.Now())
				b.fault(s.h, gpuUUID(0))
			}
			d := shown(b, gpuDev(0), gpuDev(1))
			if h := d[gpuUUID(0)].Health; h.State != tc.want || h.Reason != tc.reason || !h.Since.Equal(at[tc.sinceStep]) {
				t.Errorf("health = %s %q since %s, want %s %q since %s", h.State, h.Reason, h.Since, tc.want, tc.reason, at[tc.sinceStep])
			}
			if d[gpuUUID(0)].Healthy != (tc.want == HealthDegraded) {
				t.Errorf("Healthy = %v for %s", d[gpuUUID(0)].Healthy, tc.want)
			}
			if h := d[gpuUUID(1)].Health; h.State != HealthHealthy {
				t.Errorf("GPU 1 = %s: a fault on GPU 0 must not touch it", h.State)
			}
			if b.state(gpuUUID(0)) != tc.want {
				t.Errorf("state = %s, want %s", b.state(gpuUUID(0)), tc.want)
			}
		})
	}
}

func TestHealthBookRecoversOnlyAfterQuietPeriodAndPassingProbe(t *testing.T) {
	b, clk := newTestBook(t, defaultPolicy())
	devs := []Device{gpuDev(0), gpuDev(1), cpuDev}
	shown(b, devs...) // every device seen healthy at epoch
	b.fault(unhealthyXid, gpuUUID(0))
	steps := []struct {
		after    time.Duration
		due      bool  // whether GPU 0 is handed out for a probe
		probeErr error // the probe's outcome when it is
		want     HealthState
	}{
		{bookQuiet - time.Second, false, nil, HealthUnhealthy},                    // quiet period not over
		{time.Second, true, errors.New("row remapping pending"), HealthUnhealthy}, // due, probe fails
		{bookProbe - time.Second, false, nil, HealthUnhealthy},                    // probes are spaced out
		{time.Second, true, nil, HealthHealthy},                                   // probe passes: back
		{bookQuiet + bookProbe, false, nil, HealthHealthy},                        // healthy devices are never probed
	}
	var recoveredAt time.Time
	for i, s := range steps {
		clk.Advance(s.after)
		due, at := b.dueForProbe(devs)
		if !at.Equal(clk.Now()) {
			t.Fatalf("step %d: probe time %s, want now %s", i, at, clk.Now())
		}
		var uuids, want []string
		for _, d := range due {
			uuids = append(uuids, d.UUID)
		}
		if s.due {
			want = []string{gpuUUID(0)}
		}
		if !slices.Equal(uuids, want) {
			t.Fatalf("step %d (+%s): due %v, want %v", i, clk.Now().Sub(epoch), uuids, want)
		}
		for _, d := range due {
			b.probed(d.UUID, at, s.probeErr)
			if s.probeErr == nil {
				recoveredAt = at
			}
		}
		if got := b.state(gpuUUID(0)); got != s.want {
			t.Fatalf("step %d: state %s, want %s", i, got, s.want)
		}
	}
	h := shown(b, devs...)[gpuUUID(0)].Health
	wantReason := fmt.Sprintf("recovered: no fault for %s and the probe passed (was unhealthy: %s)", bookQuiet, unhealthyXid.Reason)
	if h.Reason != wantReason || !h.Since.Equal(recoveredAt) {
		t.Errorf("recovered health = %q since %s, want %q since %s", h.Reason, h.Since, wantReason, recoveredAt)
	}
}

func TestHealthBookFaultDuringProbeCancelsRecovery(t *testing.T) {
	b, clk := newTestBook(t, defaultPolicy())
	b.fault(degradedXid, gpuUUID(0))
	clk.Advance(bookQuiet)
	due, at := b.dueForProbe([]Device{gpuDev(0)})
	if len(due) != 1 {
		t.Fatalf("due = %v, want GPU 0", due)
	}
	clk.Advance(time.Second) // the probe takes a second; a new fault lands meanwhile
	b.fault(degradedXid, gpuUUID(0))
	b.probed(gpuUUID(0), at, nil)
	if got := b.state(gpuUUID(0)); got != HealthDegraded {
		t.Fatalf("state %s: a fault after the probe started must keep the device faulty", got)
	}
	// The new fault restarted the quiet period.
	clk.Advance(bookQuiet - time.Second)
	if due, _ := b.dueForProbe([]Device{gpuDev(0)}); len(due) != 0 {
		t.Fatalf("due %v before the restarted quiet period is over", due)
	}
	clk.Advance(time.Second)
	if due, _ := b.dueForProbe([]Device{gpuDev(0)}); len(due) != 1 {
		t.Fatal("not due once the restarted quiet period is over")
	}
}

func TestHealthBookStallsMakeAcceleratorsUnknown(t *testing.T) {
	b, clk := newTestBook(t, defaultPolicy())
	devs := []Device{gpuDev(0), gpuDev(1), migDev(0), cpuDev}
	shown(b, devs...)
	b.fault(unhealthyXid, gpuUUID(1))
	b.fault(degradedXid, migUUID(0))
	state := func(step string, want map[string]HealthState, reason string, since time.Time) {
		t.Helper()
		got := shown(b, devs...)
		for uuid, w := range want {
			d := got[uuid]
			if d.Health.State != w || d.Healthy != d.Health.Healthy() {
				t.Errorf("%s: %s = %s (Healthy=%v), want %s", step, uuid, d.Health.State, d.Healthy, w)
			}
			if w == HealthUnknown && (d.Health.Reason != reason || !d.Health.Since.Equal(since) || d.Health.Action == "") {
				t.Errorf("%s: %s = %q since %s (action %q), want %q since %s", step, uuid, d.Health.Reason, d.Health.Since, d.Health.Action, reason, since)
			}
		}
	}
	base := map[string]HealthState{gpuUUID(0): HealthHealthy, gpuUUID(1): HealthUnhealthy, migUUID(0): HealthDegraded, CPUUUID: HealthHealthy}
	stalled := map[string]HealthState{gpuUUID(0): HealthUnknown, gpuUUID(1): HealthUnhealthy, migUUID(0): HealthUnknown, CPUUUID: HealthHealthy}

	clk.Advance(time.Minute)
	b.callFailed(errors.New("device count: ERROR_UNKNOWN")) // a failure, not a stall
	state("failed call", base, "", time.Time{})

	stall1 := fmt.Errorf("query GPU 0: %w: no answer within 5s", ErrStalled)
	b.callFailed(stall1)
	t1 := clk.Now()
	state("stalled call", stalled, stall1.Error(), t1)

	clk.Advance(time.Minute)
	stall2 := fmt.Errorf("device count: %w: query GPU 0 has not returned", ErrStalled)
	b.callFailed(stall2)
	state("still stalled", stalled, stall2.Error(), t1) // the stall started at t1

	clk.Advance(time.Minute)
	b.watchFailed(errors.New("ERROR_UNKNOWN"))
	t3 := clk.Now()
	state("stalled call and failing watch", stalled, stall2.Error(), t3) // the call's reason wins

	b.callAnswered()
	state("failing watch", stalled, "health event watch failing: ERROR_UNKNOWN", t3)

	if !b.watchAnswered() {
		t.Error("watchAnswered = false while the watch was failing")
	}
	if b.watchAnswered() {
		t.Error("second watchAnswered = true")
	}
	state("answering again", base, "", time.Time{})
	if h := shown(b, devs...)[gpuUUID(0)].Health; !h.Since.Equal(epoch) {
		t.Errorf("GPU 0 healthy since %s, want since it was first seen (%s)", h.Since, epoch)
	}
}

func TestHealthBookEvents(t *testing.T) {
	gpuWide := func(typ RawEventType, xid uint64) RawEvent {
		return RawEvent{Type: typ, UUID: gpuUUID(0), Xid: xid, GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}
	}
	family := []string{gpuUUID(0), migUUID(0), migUUID(1)}
	cases := []struct {
		name      string
		disable   string
		enable    string
		ev        RawEvent
		targets   []string
		want      HealthState // of every target
		xidCounts bool        // whether every target counts the Xid
	}{
		{"critical Xid on a GPU and its instances", "", "", gpuWide(RawXid, 48), family, HealthUnhealthy, true},
		{"Xid 79 is lost", "", "", gpuWide(RawXid, 79), family[:1], HealthLost, true},
		{"Xid 94 is degraded", "", "", gpuWide(RawXid, 94), family[:1], HealthDegraded, true},
		{"unknown Xid is unhealthy", "", "", gpuWide(RawXid, 999), family[:1], HealthUnhealthy, true},
		{"application Xid is counted, not acted on", "", "", gpuWide(RawXid, 13), family, HealthHealthy, true},
		{"enable list overrides the default ignore list", "", "13", gpuWide(RawXid, 13), family[:1], HealthUnhealthy, true},
		{"disable list adds Xids", "48", "", gpuWide(RawXid, 48), family[:1], HealthHealthy, true},
		{"disable all", "all", "", gpuWide(RawXid, 79), family[:1], HealthHealthy, true},
		{"enable wins over disable all", "all", "79", gpuWide(RawXid, 79), family[:1], HealthLost, true},
		{"instance Xid hits the instance only", "", "", RawEvent{Type: RawXid, UUID: gpuUUID(0), Xid: 48, GPUInstanceID: 2}, family[2:], HealthUnhealthy, true},
		{"double-bit ECC", "", "", gpuWide(RawDoubleBitECC, 0), family, HealthUnhealthy, false},
		{"lost", "", "", gpuWide(RawLost, 0), family, HealthLost, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := NewXidPolicy(tc.disable, tc.enable)
			b, _ := newTestBook(t, p)
			b.event(tc.ev, tc.targets)
			got := shown(b, gpuDev(0), migDev(0), migDev(1), gpuDev(1))
			for _, u := range family {
				d := got[u]
				want, wantCount := HealthHealthy, uint64(0)
				if slices.Contains(tc.targets, u) {
					want = tc.want
					if tc.xidCounts {
						wantCount = 1
					}
				}
				if d.Health.State != want {
					t.Errorf("%s = %s (%s), want %s", u, d.Health.State, d.Health.Reason, want)
				}
				if want != HealthHealthy && (d.Health.Reason == "" || d.Health.Action == "") {
					t.Errorf("%s health %+v lacks a reason or action", u, d.Health)
				}
				if d.XidCounts[tc.ev.Xid] != wantCount || len(d.XidCounts) != int(wantCount) {
					t.Errorf("%s Xid counts %v, want Xid %d counted %d times", u, d.XidCounts, tc.ev.Xid, wantCount)
				}
			}
			if d := got[gpuUUID(1)]; d.Health.State != HealthHealthy || d.XidCounts != nil {
				t.Errorf("GPU 1 = %s %v: the event is not about it", d.Health.State, d.XidCounts)
			}
		})
	}
}

func TestHealthBookXidCountsAreCopies(t *testing.T) {
	b, _ := newTestBook(t, defaultPolicy())
	ev := RawEvent{Type: RawXid, UUID: gpuUUID(0), Xid: 13, GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}
	b.event(ev, []string{gpuUUID(0)})
	b.event(ev, []string{gpuUUID(0)})
	d := shown(b, gpuDev(0))[gpuUUID(0)]
	if d.XidCounts[13] != 2 {
		t.Fatalf("Xid 13 counted %d times, want 2", d.XidCounts[13])
	}
	d.XidCounts[13] = 100 // a snapshot reader scribbling on its copy
	if again := shown(b, gpuDev(0))[gpuUUID(0)]; again.XidCounts[13] != 2 {
		t.Errorf("the book's count became %d through a snapshot's map", again.XidCounts[13])
	}
}

func TestEventTargets(t *testing.T) {
	readings := []Device{gpuDev(0), migDev(0), migDev(1), gpuDev(1)}
	readings[2].MIG.ComputeInstanceID = 3
	cases := []struct {
		name string
		ev   RawEvent
		want []string
	}{
		{"no UUID", RawEvent{Type: RawLost, GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}, nil},
		{"whole GPU with instances", RawEvent{UUID: gpuUUID(0), GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}, []string{gpuUUID(0), migUUID(0), migUUID(1)}},
		{"GPU without instances", RawEvent{UUID: gpuUUID(1), GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}, []string{gpuUUID(1)}},
		{"GPU and compute instance", RawEvent{UUID: gpuUUID(0), GPUInstanceID: 2, ComputeInstanceID: 3}, []string{migUUID(1)}},
		{"GPU instance, any compute instance", RawEvent{UUID: gpuUUID(0), GPUInstanceID: 1, ComputeInstanceID: NoInstance}, []string{migUUID(0)}},
		{"compute instance that is not there: whole GPU", RawEvent{UUID: gpuUUID(0), GPUInstanceID: 2, ComputeInstanceID: 9}, []string{gpuUUID(0), migUUID(0), migUUID(1)}},
		{"GPU not read yet", RawEvent{UUID: gpuUUID(5), GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}, []string{gpuUUID(5)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := eventTargets(tc.ev, readings); !slices.Equal(got, tc.want) {
				t.Errorf("targets = %v, want %v", got, tc.want)
			}
		})
	}
}
