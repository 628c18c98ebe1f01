package placement

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// ErrNoPlacement is returned by PlaceAndReserve when no device can take the
// kernel; the Decision that comes with it says why for every candidate.
var ErrNoPlacement = errors.New("no device can take the kernel")

// ErrAlreadyReserved is returned when a key already holds a reservation.
var ErrAlreadyReserved = errors.New("kernel already holds a reservation")

// Reservation is one promise of memory on a device.
type Reservation struct {
	Key    string  `json:"key"`
	Device string  `json:"device"`
	MiB    float64 `json:"mib"`
}

// Ledger records what the host has promised per device, so that concurrent
// placements never overcommit.
//
// # Reconciling with NVML
//
// A reservation covers the gap between a kernel being placed and its memory
// showing up as used in NVML. While a reservation is outstanding, admission
// subtracts it from NVML's live free memory. Once a backend has really
// allocated the kernel's memory on the device (NVML's used memory now counts
// it), the backend calls Settle and the reservation stops being subtracted,
// so the same bytes are not counted twice; the entry is kept so that unload
// and re-placement know what the kernel holds. Release removes the entry on
// unload. Today's only backend is the CPU, which allocates nothing on GPUs:
// reservations on GPUs stay outstanding until unload, which is the
// conservative choice (the host never promises memory it cannot see).
type Ledger struct {
	mu      sync.Mutex
	byDev   map[string]float64 // outstanding MiB per device
	entries map[string]entry
}

type entry struct {
	Reservation
	settled bool
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{byDev: make(map[string]float64), entries: make(map[string]entry)}
}

// ReservedMiB returns the outstanding reservations on device. The caller
// must not hold l.mu; use reservedLocked inside the ledger.
func (l *Ledger) ReservedMiB(device string) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byDev[device]
}

// lockedView lets Plan read the ledger while PlaceAndReserve holds the lock.
type lockedView struct{ l *Ledger }

func (v lockedView) ReservedMiB(device string) float64 { return v.l.byDev[device] }

// PlaceAndReserve plans req and, if a device is found, reserves the estimate
// on it under key, atomically with respect to other calls on this ledger.
// A key that already holds a reservation is refused with ErrAlreadyReserved;
// release it first (Move does both for re-placement).
func (l *Ledger) PlaceAndReserve(p *Planner, key string, req Request, devices []Device) (Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.entries[key]; ok {
		return Decision{}, fmt.Errorf("%w: %s", ErrAlreadyReserved, key)
	}
	return l.placeLocked(p, key, req, devices)
}

func (l *Ledger) placeLocked(p *Planner, key string, req Request, devices []Device) (Decision, error) {
	var dec Decision
	if err := p.PlanInto(&dec, req, devices, lockedView{l}); err != nil {
		return dec, err
	}
	if !dec.Placed() {
		return dec, ErrNoPlacement
	}
	l.entries[key] = entry{Reservation: Reservation{Key: key, Device: dec.Device, MiB: dec.EstimateMiB}}
	l.byDev[dec.Device] += dec.EstimateMiB
	return dec, nil
}

// Move re-plans key's reservation with the devices given (typically the
// snapshot without the device being left) and swaps it in one step: the old
// reservation is released only if a new placement is found.
func (l *Ledger) Move(p *Planner, key string, req Request, devices []Device) (Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, had := l.entries[key]
	if had {
		l.releaseLocked(key)
	}
	dec, err := l.placeLocked(p, key, req, devices)
	if err != nil && had {
		// Put the old reservation back: a failed move changes nothing.
		l.entries[key] = old
		if !old.settled {
			l.byDev[old.Device] += old.MiB
		}
	}
	return dec, err
}

// Settle marks key's memory as really allocated on its device (NVML now
// counts it as used), so it is no longer subtracted from live free memory.
func (l *Ledger) Settle(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	if !ok || e.settled {
		return
	}
	e.settled = true
	l.entries[key] = e
	l.subtract(e.Device, e.MiB)
}

// Release removes key's reservation (on unload). It reports whether there
// was one.
func (l *Ledger) Release(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.releaseLocked(key)
}

func (l *Ledger) releaseLocked(key string) bool {
	e, ok := l.entries[key]
	if !ok {
		return false
	}
	delete(l.entries, key)
	if !e.settled {
		l.subtract(e.Device, e.MiB)
	}
	return true
}

func (l *Ledger) subtract(device string, mib float64) {
	v := l.byDev[device] - mib
	if v < 1e-9 {
		delete(l.byDev, device)
		return
	}
	l.byDev[device] = v
}

// Lookup returns key's reservation.
func (l *Ledger) Lookup(key string) (Reservation, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	return e.Reservation, ok
}

// Reservations lists every reservation, sorted by device then key.
func (l *Ledger) Reservations() []Reservation {
	l.mu.Lock()
	out := make([]Reservation, 0, len(l.entries))
	for _, e := range l.entries {
		out = append(out, e.Reservation)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Device != out[j].Device {
			return out[i].Device < out[j].Device
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// OnDevice lists the reservations held on device, sorted by key.
func (l *Ledger) OnDevice(device string) []Reservation {
	var out []Reservation
	for _, r := range l.Reservations() {
		if r.Device == device {
			out = append(out, r)
		}
	}
	return out
}

// Totals returns the outstanding MiB per device.
func (l *Ledger) Totals() map[string]float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]float64, len(l.byDev))
	for k, v := range l.byDev {
		out[k] = v
	}
	return out
}
