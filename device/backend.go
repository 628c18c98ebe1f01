package device

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Sentinel errors callers branch on.
var (
	// ErrLibraryNotFound means the NVML library is not installed (or this is
	// a build without cgo). The inventory then runs CPU-only.
	ErrLibraryNotFound = errors.New("NVML library not found")
	// ErrNoGPU is returned by Open when Options.RequireGPU is set and no
	// GPU backend could be opened.
	ErrNoGPU = errors.New("a GPU is required but none is available")
	// ErrGPULost means the device has fallen off the bus or needs a reset
	// (NVML's ERROR_GPU_IS_LOST or ERROR_RESET_REQUIRED).
	ErrGPULost = errors.New("GPU is lost")
	// ErrTimeout is returned by Backend.WaitEvent when no event arrived.
	ErrTimeout = errors.New("no event before the timeout")
	// ErrNotSupported means the device or driver does not support a query.
	ErrNotSupported = errors.New("not supported by this device or driver")
	// ErrStalled means a backend call did not return within the watchdog
	// timeout, or an earlier one still has not.
	ErrStalled = errors.New("backend call stalled")
	// ErrUnknownDevice means no device has the UUID given.
	ErrUnknownDevice = errors.New("no device with this UUID")
	// ErrClosed is returned by an inventory or simulator after Close.
	ErrClosed = errors.New("closed")
)

// Versions are the driver-side versions a backend reports.
type Versions struct {
	Driver     string // e.g. "550.54.15"
	CUDADriver string // e.g. "12.4"
	NVML       string // e.g. "12.550.54.15"
}

// RawEventType is the kind of event a backend reports.
type RawEventType int

// Event types a backend reports.
const (
	// RawXid is a critical Xid error; RawEvent.Xid holds its number.
	RawXid RawEventType = iota + 1
	// RawDoubleBitECC is an uncorrectable (double-bit) ECC error.
	RawDoubleBitECC
	// RawLost means a GPU fell off the bus; RawEvent.UUID may be empty when
	// NVML could not say which.
	RawLost
)

// NoInstance is the GPU or compute instance id NVML reports for events that
// are not about a MIG instance.
const NoInstance = 0xFFFFFFFF

// RawEvent is one hardware event as a backend reports it, before the
// inventory classifies it.
type RawEvent struct {
	Type RawEventType
	// UUID is the GPU (never MIG) UUID the event is about.
	UUID string
	// Xid is the Xid number for RawXid events.
	Xid uint64
	// GPUInstanceID and ComputeInstanceID locate a MIG instance; NoInstance
	// when the event concerns the whole GPU.
	GPUInstanceID     uint32
	ComputeInstanceID uint32
}

// Backend is what the inventory needs from NVML. The NVML adapter, the
// Simulator and tests' fakes implement it. Methods other than Init must not
// be called unless Init succeeded; the inventory guarantees this. Every
// method but Source and Warnings may block (NVML calls can hang), so the
// inventory calls them under a watchdog.
type Backend interface {
	// Source names the backend for Snapshot.Source.
	Source() string
	// Init starts the backend. ErrLibraryNotFound means "no NVML here".
	Init() error
	// Shutdown releases the backend.
	Shutdown() error
	// Versions reports the driver, CUDA driver and NVML versions.
	Versions() (Versions, error)
	// Count reports how many GPUs the backend enumerates.
	Count() (int, error)
	// Query reads GPU index: the GPU first, then its MIG instances if its
	// MIG mode is enabled. Health, Visible and CUDAOrdinal are left for the
	// inventory to fill. A lost GPU gives an error wrapping ErrGPULost.
	Query(index int) ([]Device, error)
	// WaitEvent waits up to timeout for the next health event. It returns
	// ErrTimeout when none came and an error wrapping ErrGPULost when NVML
	// reported a lost GPU without saying which.
	WaitEvent(ctx context.Context, timeout time.Duration) (RawEvent, error)
	// Probe exercises the GPU with this UUID as hard as the backend can, to
	// decide whether a faulty device has recovered.
	Probe(uuid string) error
	// Warnings lists what Init found worth telling an operator, such as GPUs
	// the health event watch cannot cover. It does not call the hardware.
	Warnings() []string
}

// watchdog runs backend calls in their own goroutines so a call that hangs
// (a wedged driver never returns) cannot hang the inventory. cgo calls cannot
// be cancelled: a call that overruns is left to finish on its own, and until
// it does every new call fails fast with ErrStalled.
type watchdog struct {
	timeout time.Duration

	mu         sync.Mutex
	stuckOp    string
	stuckSince time.Time
}

// do runs fn, allowing it timeout plus extra (for calls such as an event
// wait that block by design).
func (w *watchdog) do(ctx context.Context, op string, extra time.Duration, fn func() error) error {
	w.mu.Lock()
	if w.stuckOp != "" {
		stuck, since := w.stuckOp, w.stuckSince
		w.mu.Unlock()
		return fmt.Errorf("%s: %w: %s has not returned since %s", op, ErrStalled, stuck, since.Format(time.RFC3339))
	}
	w.mu.Unlock()
	if w.timeout <= 0 {
		return fn()
	}
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(w.timeout + extra)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		w.mu.Lock()
		w.stuckOp, w.stuckSince = op, time.Now()
		w.mu.Unlock()
		go func() {
			<-done
			w.mu.Lock()
			w.stuckOp = ""
			w.mu.Unlock()
		}()
		return fmt.Errorf("%s: %w: no answer within %s", op, ErrStalled, w.timeout+extra)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
}
