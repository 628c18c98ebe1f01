package device

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Clock tells the time. The simulator's fault timeline and the inventory's
// health hysteresis read it, so tests can move time on without sleeping.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// ManualClock is a Clock that moves only when told to. It is safe for
// concurrent use.
type ManualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewManualClock returns a clock stopped at start.
func NewManualClock(start time.Time) *ManualClock { return &ManualClock{now: start} }

// Now returns the clock's current time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Names of the built-in simulated nodes.
const (
	SimDGXA100    = "dgxa100"
	SimDGXA100MIG = "dgxa100-mig"
)

// Simulator is a Backend that simulates a GPU node in pure Go, so it works in
// builds without cgo. Its devices come from a SimSpec; its scripted faults
// fire when the clock passes their time; and its methods (Lose, InjectXid,
// SetMemoryUsed, ...) let tests change the node at will. It is safe for
// concurrent use.
type Simulator struct {
	source string
	clock  Clock

	mu       sync.Mutex
	spec     SimSpec
	started  bool
	start    time.Time
	faults   []timedFault
	next     int
	gpus     []*simState
	events   []RawEvent
	notify   chan struct{}
	hang     chan struct{}
	closed   bool
	probeErr map[string]error
}

type timedFault struct {
	at time.Duration
	SimFault
}

type simState struct {
	gpu  Device
	migs []Device
	lost bool
}

// NewSimulator builds a simulator from a validated spec (see ParseSimSpec).
// name is used in Snapshot.Source as "simulated:NAME". A nil clock means the
// system clock.
func NewSimulator(name string, spec SimSpec, clock Clock) (*Simulator, error) {
	if err := spec.normalize(); err != nil {
		return nil, err
	}
	if clock == nil {
		clock = systemClock{}
	}
	s := &Simulator{source: "simulated:" + name, clock: clock, spec: spec, notify: make(chan struct{}, 1), probeErr: map[string]error{}}
	for i, g := range spec.GPUs {
		st := &simState{gpu: Device{
			Kind: KindGPU, Index: i, UUID: g.UUID, Name: g.Name, PCIBusID: g.PCIBusID,
			MemoryTotalBytes: g.Memory.TotalBytes, MemoryUsedBytes: g.Memory.UsedBytes, MemoryReservedBytes: g.Memory.ReservedBytes,
			MemoryFreeBytes:   g.Memory.TotalBytes - g.Memory.ReservedBytes - g.Memory.UsedBytes,
			ComputeCapability: g.ComputeCapability, MIGEnabled: len(g.MIG) > 0,
			UtilizationGPU: g.Utilization.GPUPercent, UtilizationMemory: g.Utilization.MemoryPercent,
			TemperatureC: g.TemperatureC, PowerW: g.PowerW,
			ECCCorrected: g.ECC.Corrected, ECCUncorrected: g.ECC.Uncorrected,
		}}
		for j, m := range g.MIG {
			st.migs = append(st.migs, Device{
				Kind: KindMIG, Index: i, UUID: m.UUID, Name: g.Name + " MIG " + m.Profile,
				PCIBusID:         g.PCIBusID,
				MemoryTotalBytes: m.Memory.TotalBytes, MemoryUsedBytes: m.Memory.UsedBytes, MemoryReservedBytes: m.Memory.ReservedBytes,
				MemoryFreeBytes:   m.Memory.TotalBytes - m.Memory.ReservedBytes - m.Memory.UsedBytes,
				ComputeCapability: g.ComputeCapability,
				MIG:               &MIGInfo{ParentUUID: g.UUID, Index: j, GPUInstanceID: m.GPUInstanceID, ComputeInstanceID: m.ComputeInstanceID, Profile: m.Profile},
			})
		}
		s.gpus = append(s.gpus, st)
	}
	for _, f := range spec.Faults {
		at, _ := time.ParseDuration(f.At) // validated by normalize
		s.faults = append(s.faults, timedFault{at: at, SimFault: f})
	}
	sort.SliceStable(s.faults, func(i, j int) bool { return s.faults[i].at < s.faults[j].at })
	return s, nil
}

// OpenSimulator builds a simulator from a --simulate value: "dgxa100",
// "dgxa100-mig", or the path of a JSON file in the SimSpec format.
func OpenSimulator(value string, clock Clock) (*Simulator, error) {
	switch value {
	case SimDGXA100:
		return NewSimulator(value, DGXA100Spec(), clock)
	case SimDGXA100MIG:
		return NewSimulator(value, DGXA100MIGSpec(), clock)
	}
	data, err := os.ReadFile(value)
	if err != nil {
		return nil, fmt.Errorf("--simulate %q is neither %q, %q nor a readable file: %w", value, SimDGXA100, SimDGXA100MIG, err)
	}
	spec, err := ParseSimSpec(data)
	if err != nil {
		return nil, fmt.Errorf("simulation file %s: %w", value, err)
	}
	return NewSimulator(filepath.Base(value), spec, clock)
}

var _ Backend = (*Simulator)(nil)

// Source implements Backend.
func (s *Simulator) Source() string { return s.source }

// Init implements Backend; it starts the fault timeline.
func (s *Simulator) Init() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if !s.started {
		s.started, s.start = true, s.clock.Now()
	}
	return nil
}

// Shutdown implements Backend; blocked event waits return ErrClosed.
func (s *Simulator) Shutdown() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.notify)
	}
	return nil
}

// Versions implements Backend.
func (s *Simulator) Versions() (Versions, error) {
	if err := s.enter(); err != nil {
		return Versions{}, err
	}
	defer s.mu.Unlock()
	return Versions{Driver: s.spec.DriverVersion, CUDADriver: s.spec.CUDADriverVersion, NVML: s.spec.NVMLVersion}, nil
}

// Count implements Backend.
func (s *Simulator) Count() (int, error) {
	if err := s.enter(); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	return len(s.gpus), nil
}

// Query implements Backend.
func (s *Simulator) Query(index int) ([]Device, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if index < 0 || index >= len(s.gpus) {
		return nil, fmt.Errorf("simulator: GPU index %d out of range 0..%d", index, len(s.gpus)-1)
	}
	st := s.gpus[index]
	if st.lost {
		return nil, fmt.Errorf("GPU %d (%s): %w", index, st.gpu.UUID, ErrGPULost)
	}
	out := make([]Device, 0, 1+len(st.migs))
	out = append(out, st.gpu)
	for _, m := range st.migs {
		mc := m
		info := *m.MIG
		mc.MIG = &info
		out = append(out, mc)
	}
	return out, nil
}

// WaitEvent implements Backend. Events injected by hooks wake it at once;
// scripted faults fire when the clock reaches them.
func (s *Simulator) WaitEvent(ctx context.Context, timeout time.Duration) (RawEvent, error) {
	for {
		if err := s.enter(); err != nil {
			return RawEvent{}, err
		}
		if len(s.events) > 0 {
			ev := s.events[0]
			s.events = s.events[1:]
			s.mu.Unlock()
			return ev, nil
		}
		wait := timeout
		if s.next < len(s.faults) {
			if d := s.start.Add(s.faults[s.next].at).Sub(s.clock.Now()); d < wait {
				wait = max(d, time.Millisecond)
			}
		}
		notify := s.notify
		s.mu.Unlock()
		if timeout <= 0 {
			return RawEvent{}, ErrTimeout
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return RawEvent{}, ctx.Err()
		case _, ok := <-notify:
			timer.Stop()
			if !ok {
				return RawEvent{}, ErrClosed
			}
		case <-timer.C:
			if wait == timeout {
				if err := s.enter(); err != nil {
					return RawEvent{}, err
				}
				if len(s.events) > 0 {
					ev := s.events[0]
					s.events = s.events[1:]
					s.mu.Unlock()
					return ev, nil
				}
				s.mu.Unlock()
				return RawEvent{}, ErrTimeout
			}
		}
	}
}

// Probe implements Backend: a lost GPU fails, and so does one given a probe
// error with SetProbeError.
func (s *Simulator) Probe(uuid string) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	i, _, ok := s.findLocked(uuid)
	if !ok {
		return fmt.Errorf("probe %s: %w", uuid, ErrUnknownDevice)
	}
	if s.gpus[i].lost {
		return fmt.Errorf("probe %s: %w", uuid, ErrGPULost)
	}
	if err := s.probeErr[strings.ToUpper(uuid)]; err != nil {
		return fmt.Errorf("probe %s: %w", uuid, err)
	}
	return nil
}

// Warnings implements Backend: a simulated node watches every GPU, so there
// is nothing to warn about.
func (s *Simulator) Warnings() []string { return nil }

// enter takes the lock after any hang is released and applies scripted
// faults that are due. On success the caller holds s.mu.
func (s *Simulator) enter() error {
	s.mu.Lock()
	for s.hang != nil {
		h := s.hang
		s.mu.Unlock()
		<-h
		s.mu.Lock()
	}
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.advanceLocked()
	return nil
}

func (s *Simulator) advanceLocked() {
	if !s.started {
		return
	}
	elapsed := s.clock.Now().Sub(s.start)
	for s.next < len(s.faults) && s.faults[s.next].at <= elapsed {
		f := s.faults[s.next]
		s.next++
		gpu, mig, err := s.spec.resolveFault(f.SimFault)
		if err != nil {
			continue // validated when the spec was built
		}
		uuid := s.gpus[gpu].gpu.UUID
		if mig >= 0 {
			uuid = s.gpus[gpu].migs[mig].UUID
		}
		switch f.Kind {
		case FaultXid:
			_ = s.injectXidLocked(uuid, f.Xid)
		case FaultDoubleBitECC:
			_ = s.injectDBELocked(uuid)
		case FaultLost:
			_ = s.loseLocked(uuid)
		case FaultRestore:
			_ = s.restoreLocked(uuid)
		case FaultMemoryUsed:
			_ = s.setMemoryUsedLocked(uuid, *f.UsedBytes)
		}
	}
}

// findLocked locates a GPU or MIG UUID: its GPU position and MIG position
// (-1 for the GPU itself).
func (s *Simulator) findLocked(uuid string) (gpu, mig int, ok bool) {
	for i, st := range s.gpus {
		if strings.EqualFold(st.gpu.UUID, uuid) {
			return i, -1, true
		}
		for j, m := range st.migs {
			if strings.EqualFold(m.UUID, uuid) {
				return i, j, true
			}
		}
	}
	return 0, 0, false
}

func (s *Simulator) wakeLocked() {
	if s.closed {
		return
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *Simulator) mutate(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.advanceLocked()
	return fn()
}

// Lose makes a GPU fall off the bus: its queries fail with ErrGPULost and a
// lost event is delivered. A MIG UUID loses its whole GPU.
func (s *Simulator) Lose(uuid string) error {
	return s.mutate(func() error { return s.loseLocked(uuid) })
}

func (s *Simulator) loseLocked(uuid string) error {
	i, _, ok := s.findLocked(uuid)
	if !ok {
		return fmt.Errorf("simulator: lose %s: %w", uuid, ErrUnknownDevice)
	}
	s.gpus[i].lost = true
	s.events = append(s.events, RawEvent{Type: RawLost, UUID: s.gpus[i].gpu.UUID, GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance})
	s.wakeLocked()
	return nil
}

// Restore brings a lost GPU back: queries and probes succeed again. The
// inventory still waits for its quiet period before calling it healthy.
func (s *Simulator) Restore(uuid string) error {
	return s.mutate(func() error { return s.restoreLocked(uuid) })
}

func (s *Simulator) restoreLocked(uuid string) error {
	i, _, ok := s.findLocked(uuid)
	if !ok {
		return fmt.Errorf("simulator: restore %s: %w", uuid, ErrUnknownDevice)
	}
	s.gpus[i].lost = false
	return nil
}

// InjectXid delivers a critical Xid event for a GPU or MIG instance.
func (s *Simulator) InjectXid(uuid string, xid uint64) error {
	return s.mutate(func() error { return s.injectXidLocked(uuid, xid) })
}

func (s *Simulator) injectXidLocked(uuid string, xid uint64) error {
	ev, err := s.eventForLocked(uuid)
	if err != nil {
		return fmt.Errorf("simulator: Xid %d on %s: %w", xid, uuid, err)
	}
	ev.Type, ev.Xid = RawXid, xid
	s.events = append(s.events, ev)
	s.wakeLocked()
	return nil
}

// InjectDoubleBitECC delivers an uncorrectable ECC event and counts it in the
// device's uncorrected ECC total.
func (s *Simulator) InjectDoubleBitECC(uuid string) error {
	return s.mutate(func() error { return s.injectDBELocked(uuid) })
}

func (s *Simulator) injectDBELocked(uuid string) error {
	ev, err := s.eventForLocked(uuid)
	if err != nil {
		return fmt.Errorf("simulator: ECC error on %s: %w", uuid, err)
	}
	ev.Type = RawDoubleBitECC
	i, j, _ := s.findLocked(uuid)
	if j >= 0 {
		s.gpus[i].migs[j].ECCUncorrected++
	}
	s.gpus[i].gpu.ECCUncorrected++
	s.events = append(s.events, ev)
	s.wakeLocked()
	return nil
}

func (s *Simulator) eventForLocked(uuid string) (RawEvent, error) {
	i, j, ok := s.findLocked(uuid)
	if !ok {
		return RawEvent{}, ErrUnknownDevice
	}
	ev := RawEvent{UUID: s.gpus[i].gpu.UUID, GPUInstanceID: NoInstance, ComputeInstanceID: NoInstance}
	if j >= 0 {
		ev.GPUInstanceID = s.gpus[i].migs[j].MIG.GPUInstanceID
		ev.ComputeInstanceID = s.gpus[i].migs[j].MIG.ComputeInstanceID
	}
	return ev, nil
}

// SetMemoryUsed sets the memory in use on a GPU or MIG instance, as another
// process allocating or freeing would; free memory follows.
func (s *Simulator) SetMemoryUsed(uuid string, bytes uint64) error {
	return s.mutate(func() error { return s.setMemoryUsedLocked(uuid, bytes) })
}

func (s *Simulator) setMemoryUsedLocked(uuid string, bytes uint64) error {
	i, j, ok := s.findLocked(uuid)
	if !ok {
		return fmt.Errorf("simulator: set memory used on %s: %w", uuid, ErrUnknownDevice)
	}
	d := &s.gpus[i].gpu
	if j >= 0 {
		d = &s.gpus[i].migs[j]
	}
	if room := d.MemoryTotalBytes - d.MemoryReservedBytes; bytes > room {
		return fmt.Errorf("simulator: set memory used on %s: %d bytes exceed the %d usable", uuid, bytes, room)
	}
	old := d.MemoryUsedBytes
	d.MemoryUsedBytes = bytes
	d.MemoryFreeBytes = d.MemoryTotalBytes - d.MemoryReservedBytes - bytes
	if j >= 0 { // the parent GPU's totals include its instances
		g := &s.gpus[i].gpu
		g.MemoryUsedBytes = max(g.MemoryUsedBytes, old) - old + bytes
		g.MemoryFreeBytes = g.MemoryTotalBytes - g.MemoryReservedBytes - min(g.MemoryUsedBytes, g.MemoryTotalBytes-g.MemoryReservedBytes)
	}
	return nil
}

// SetProbeError makes probes of a device fail with err (nil clears it), to
// test that recovery waits for a passing probe.
func (s *Simulator) SetProbeError(uuid string, err error) error {
	return s.mutate(func() error {
		if _, _, ok := s.findLocked(uuid); !ok {
			return fmt.Errorf("simulator: probe error on %s: %w", uuid, ErrUnknownDevice)
		}
		s.probeErr[strings.ToUpper(uuid)] = err
		return nil
	})
}

// Hang makes every backend call block, as a wedged driver does, until the
// returned release function is called.
func (s *Simulator) Hang() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hang == nil {
		s.hang = make(chan struct{})
	}
	h := s.hang
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hang == h {
				s.hang = nil
			}
			s.mu.Unlock()
			close(h)
		})
	}
}
