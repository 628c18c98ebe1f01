//go:build !(linux && cgo)

package device

import (
	"context"
	"fmt"
	"time"
)

// newNVMLBackend returns a backend whose Init reports ErrLibraryNotFound:
// go-nvml needs cgo on Linux, so this build runs CPU-only (or simulated).
func newNVMLBackend() Backend { return noNVML{} }

type noNVML struct{}

var _ Backend = (*noNVML)(nil)

func (noNVML) Source() string { return "nvml" }
func (noNVML) Init() error {
	return fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0 or no C compiler) and cannot load it", ErrLibraryNotFound)
}

// The methods below are never called: the inventory drops a backend whose
// Init failed.
func (noNVML) Shutdown() error             { return nil }
func (noNVML) Versions() (Versions, error) { return Versions{}, ErrLibraryNotFound }
func (noNVML) Count() (int, error)         { return 0, ErrLibraryNotFound }
func (noNVML) Query(int) ([]Device, error) { return nil, ErrLibraryNotFound }
func (noNVML) Probe(string) error          { return ErrLibraryNotFound }
func (noNVML) Warnings() []string          { return nil }
func (noNVML) WaitEvent(_ context.Context, _ time.Duration) (RawEvent, error) {
	return RawEvent{}, ErrLibraryNotFound
}
