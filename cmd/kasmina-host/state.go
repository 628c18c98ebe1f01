package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/runtime"
)

// stateStore keeps the host's state under --state-dir:
//
//	state.json                 the runtime.State, written atomically
//	artifacts/<sha256>.kernel  the bytes of every kernel loaded
//
// Writes go to a temporary file that is synced and renamed over the old
// one, so a crash (SIGKILL, power loss) leaves either the old or the new
// file, never a torn one.
type stateStore struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex // serialises saves
	pending sync.Mutex // guards timer
	timer   *time.Timer
	// writeThrough, once set (after the start-up scan), makes every change
	// save before the change is acknowledged: a load answered 201 survives
	// a crash right after.
	writeThrough atomic.Bool
}

func openState(dir string, log *slog.Logger) (*stateStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, "artifacts"), 0o750); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	return &stateStore{dir: dir, log: log}, nil
}

// Put keeps an artifact's bytes (runtime.ArtifactStore).
func (s *stateStore) Put(sha string, data []byte) error {
	if _, err := hex.DecodeString(sha); err != nil || len(sha) != 64 {
		return fmt.Errorf("artifact hash %q is not a SHA-256", sha)
	}
	p := filepath.Join(s.dir, "artifacts", sha+".kernel")
	if _, err := os.Stat(p); err == nil {
		return nil // content-addressed: already kept
	}
	return writeAtomic(p, data)
}

// Get returns a kept artifact's bytes (runtime.ArtifactStore).
func (s *stateStore) Get(sha string) ([]byte, error) {
	if _, err := hex.DecodeString(sha); err != nil || len(sha) != 64 {
		return nil, fmt.Errorf("artifact hash %q is not a SHA-256", sha)
	}
	return os.ReadFile(filepath.Join(s.dir, "artifacts", sha+".kernel"))
}

// restore loads state.json, if any, into the host and makes the host keep
// artifacts here from now on.
func (s *stateStore) restore(ctx context.Context, h *runtime.Host) {
	h.SetArtifactStore(s)
	data, err := os.ReadFile(filepath.Join(s.dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		s.log.Info("no saved state: starting fresh", slog.String("state_dir", s.dir))
		return
	}
	if err != nil {
		s.log.Error("saved state unreadable: starting fresh", slog.Any("err", err))
		return
	}
	var st runtime.State
	if err := json.Unmarshal(data, &st); err != nil {
		s.log.Error("saved state is corrupt: starting fresh (kept as state.json.corrupt)", slog.Any("err", err))
		_ = os.Rename(filepath.Join(s.dir, "state.json"), filepath.Join(s.dir, "state.json.corrupt"))
		return
	}
	n, err := h.Restore(ctx, st, s)
	if err != nil {
		s.log.Error("restoring state", slog.Any("err", err))
	}
	s.log.Info("state restored", slog.Int("kernels", n), slog.Int("of", len(st.Kernels)), slog.Int("seeds", len(st.Seeds)),
		slog.Time("saved_at", st.SavedAt))
}

// save writes the host's state now.
func (s *stateStore) save(h *runtime.Host) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := json.MarshalIndent(h.State(), "", "  ")
	if err == nil {
		err = writeAtomic(filepath.Join(s.dir, "state.json"), data)
	}
	if err != nil {
		s.log.Error("saving state", slog.Any("err", err))
	}
}

// saveSoon returns a change hook that saves the state shortly after a burst
// of changes (coalescing a repository scan's many loads into few writes),
// or at once when write-through is on.
func (s *stateStore) saveSoon(h *runtime.Host) func() {
	return func() {
		if s.writeThrough.Load() {
			s.save(h)
			return
		}
		s.pending.Lock()
		defer s.pending.Unlock()
		if s.timer != nil {
			return
		}
		s.timer = time.AfterFunc(50*time.Millisecond, func() {
			s.pending.Lock()
			s.timer = nil
			s.pending.Unlock()
			s.save(h)
		})
	}
}

// writeAtomic writes data to path through a synced temporary file renamed
// over it, then syncs the directory.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
