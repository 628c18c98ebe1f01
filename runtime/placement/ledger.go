package placement

import (
	"errors"
	"fmt"
	"sync"
)

// ErrNoPlacement is returned by PlaceAndReserve when no device can take the
// kernel; the Decision that comes with it says why for every candidate.
var ErrNoPlacement = errors.New("no device can take the kernel")

// ErrAlreadyReserved is returned when a key already holds a reservation.
var ErrAlreadyReserved = errors.New("kernel already holds a reservation")

// Ledger records what the host has promised per device, so that concurrent
// placements never overcommit.
//
// # Reconciling with NVML
//
// A reservation covers the gap between a kernel being placed and its memory
// showing up as used in NVML. While a reservation is outstanding, admission
// subtracts it from NVML's live free memory. Today's only executor is the
// CPU's, which allocates nothing on GPUs, so reservations on GPUs stay
// outstanding until the kernel leaves the device: the conservative choice
// (the host never promises memory it cannot see). A GPU executor that
// really allocates will have to stop subtracting a reservation once NVML
// counts its memory as used, so that the same bytes are not counted twice.
type Ledger struct {
	mu      sync.Mutex
	byDev   map[string]float64 // outstanding MiB per device
	entries map[string]reservation
}

// reservation is one promise of memory on a device.
type reservation struct {
	device string
	mib    float64
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{byDev: make(map[string]float64), entries: make(map[string]reservation)}
}

// ReservedMiB returns the outstanding reservations on device.
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
	l.entries[key] = reservation{device: dec.Device, mib: dec.EstimateMiB}
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
		l.byDev[old.device] += old.mib
	}
	return dec, err
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
	v := l.byDev[e.device] - e.mib
	if v < 1e-9 {
		delete(l.byDev, e.device)
	} else {
		l.byDev[e.device] = v
	}
	return true
}
