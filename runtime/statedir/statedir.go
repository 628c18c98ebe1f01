// Package statedir keeps the host's state in a directory so that what was
// acknowledged survives a restart, a crash or a power loss:
//
//	state.json                 the state document, written atomically
//	artifacts/<sha256>.kernel  the bytes of every kernel loaded, by content hash
//
// Every write goes to a temporary file that is synced and renamed over the
// old one, then the directory is synced, so a crash leaves the old file or
// the new one, never a torn one.
//
// The host calls Changed (its change hook) after every change, with its
// change lock held: Changed writes before it returns and returns the
// write's error, which makes the host refuse and undo the change, so
// nothing is acknowledged that was not saved. (The host coalesces the
// many loads of its start-up scan into one call.) Nothing is written
// before Watch connects the host, which the daemon does once the restore
// from this directory is complete.
//
// While writes fail, Err says why (the daemon's readiness shows it), the
// failures are counted (kasmina_state_save_failures_total) and flagged
// (kasmina_state_store_failing), and Run retries every RetryInterval until
// a write succeeds.
//
// A state file that cannot be used (unreadable, not JSON, a version this
// build does not read) is never overwritten: Read returns an
// *UnreadableError and the caller refuses to start, unless told to
// MoveAside.
package statedir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/internal/regularfile"
	"github.com/prometheus/client_golang/prometheus"
)

// Names inside the directory.
const (
	StateFile    = "state.json"
	ArtifactsDir = "artifacts"
)

// Defaults for Options fields left at zero.
const (
	DefaultRetryInterval = time.Second
	// DefaultMaxArtifactBytes caps what Get reads back (the artifact
	// sources cap fetches at 256 MiB).
	DefaultMaxArtifactBytes = 1 << 30
)

// Options tune a Store. Zero values take the defaults.
type Options struct {
	// Logger receives save failures and recoveries (default: discard).
	Logger *slog.Logger
	// RetryInterval is how often Run retries a failed write.
	RetryInterval time.Duration
	// MaxArtifactBytes caps an artifact read back by Get.
	MaxArtifactBytes int64
}

// Store is a state directory. Create it with Open and connect it to the
// host with Watch.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	// watched holds what Watch connected: nil before.
	watched atomic.Pointer[watch]

	mu      sync.Mutex            // serialises writes of state.json
	lastErr atomic.Pointer[error] // nil after a successful write

	saves, failures prometheus.Counter
	failing         prometheus.Gauge
}

// Open opens (creating it if needed) the state directory dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.MaxArtifactBytes <= 0 {
		opts.MaxArtifactBytes = DefaultMaxArtifactBytes
	}
	if err := os.MkdirAll(filepath.Join(dir, ArtifactsDir), 0o750); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	return &Store{
		dir: dir, opts: opts, log: opts.Logger,
		saves: prometheus.NewCounter(prometheus.CounterOpts{Name: "kasmina_state_saves_total",
			Help: "Writes of the state file that succeeded."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "kasmina_state_save_failures_total",
			Help: "Writes of the state file or of a kernel artifact that failed (the change they carried was refused and undone)."}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kasmina_state_store_failing",
			Help: "1 while the last write to the state directory failed (the host is then not ready and refuses changes), else 0."}),
	}, nil
}

// Register adds the store's metrics to reg.
func (s *Store) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{s.saves, s.failures, s.failing} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Dir returns the directory.
func (s *Store) Dir() string { return s.dir }

// Path returns the path of the state file.
func (s *Store) Path() string { return filepath.Join(s.dir, StateFile) }

// artifactPath checks sha and returns where its bytes are kept.
func (s *Store) artifactPath(sha string) (string, error) {
	if b, err := hex.DecodeString(sha); err != nil || len(b) != 32 || hex.EncodeToString(b) != sha {
		return "", fmt.Errorf("artifact hash %q is not a lowercase hex SHA-256", sha)
	}
	return filepath.Join(s.dir, ArtifactsDir, sha+".kernel"), nil
}

// Where returns the path an artifact is kept at (runtime.ArtifactStore).
func (s *Store) Where(sha string) string {
	return filepath.Join(s.dir, ArtifactsDir, sha+".kernel")
}

// Put keeps an artifact's bytes under their SHA-256 (runtime.ArtifactStore).
// A failure counts as a failed write: the load that needed it is refused.
func (s *Store) Put(sha string, data []byte) error {
	p, err := s.artifactPath(sha)
	if err != nil {
		return err
	}
	if kept, err := regularfile.ReadFile(p, int64(len(data))); err == nil && sha256.Sum256(kept) == sha256.Sum256(data) {
		return nil // content-addressed: already kept, and intact
	}
	if err := writeAtomic(p, data); err != nil {
		err = fmt.Errorf("state directory %s: keeping artifact %s: %w", s.dir, sha, err)
		s.failed(err)
		return err
	}
	return nil
}

// Get returns a kept artifact's bytes (runtime.ArtifactStore). It reads
// only a regular file; the host checks the bytes against sha.
func (s *Store) Get(sha string) ([]byte, error) {
	p, err := s.artifactPath(sha)
	if err != nil {
		return nil, err
	}
	return regularfile.ReadFile(p, s.opts.MaxArtifactBytes)
}

// UnreadableError says why the state file cannot be used. The file is left
// as it is: starting over it would overwrite everything it records.
type UnreadableError struct {
	// Path is the state file.
	Path string
	// Version is the version the file declares (0 when none could be read)
	// and Want the version this build reads.
	Version, Want int
	// Err is the cause; nil when only the version is wrong.
	Err error
}

// Error names the file, its version and the cause.
func (e *UnreadableError) Error() string {
	switch {
	case e.Err == nil && e.Version > e.Want:
		return fmt.Sprintf("state file %s has version %d, newer than the version %d this build reads (written by a newer kasmina-host)", e.Path, e.Version, e.Want)
	case e.Err == nil:
		return fmt.Sprintf("state file %s has version %d; this build reads version %d", e.Path, e.Version, e.Want)
	case e.Version != 0:
		return fmt.Sprintf("state file %s (version %d) cannot be read: %v", e.Path, e.Version, e.Err)
	}
	return fmt.Sprintf("state file %s cannot be read: %v", e.Path, e.Err)
}

// Unwrap returns the cause.
func (e *UnreadableError) Unwrap() error { return e.Err }

// maxStateBytes caps the state file read at start-up.
const maxStateBytes = 256 << 20

// Read decodes the state file into v, which must be a document with a
// top-level "version" member equal to version. found is false when there
// is no state file (a fresh start). Any other failure is an
// *UnreadableError: the file is not a regular file or cannot be read, is
// not JSON, or declares another version.
func (s *Store) Read(v any, version int) (found bool, err error) {
	p := s.Path()
	data, err := regularfile.ReadFile(p, maxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, &UnreadableError{Path: p, Want: version, Err: err}
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return true, &UnreadableError{Path: p, Want: version, Err: jsonCause(err)}
	}
	if head.Version == nil {
		return true, &UnreadableError{Path: p, Want: version, Err: errors.New("no version member")}
	}
	if *head.Version != version {
		return true, &UnreadableError{Path: p, Version: *head.Version, Want: version}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return true, &UnreadableError{Path: p, Version: *head.Version, Want: version, Err: jsonCause(err)}
	}
	return true, nil
}

// jsonCause keeps a JSON error's position but not the bytes it quotes.
func jsonCause(err error) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Errorf("JSON syntax error at byte %d", syn.Offset)
	}
	return err
}

// MoveAside renames the state file to state.json.unreadable-<time> and
// returns the new path, so that the host can start fresh without losing
// it.
func (s *Store) MoveAside() (string, error) {
	to := fmt.Sprintf("%s.unreadable-%s", s.Path(), time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Rename(s.Path(), to); err != nil {
		return "", fmt.Errorf("moving the state file aside: %w", err)
	}
	syncDir(s.dir)
	return to, nil
}

// watch is what Watch connects: state returns the document to write;
// lock runs a function with no change half made (the host's change lock).
type watch struct {
	state func() any
	lock  func(func() error) error
}

// Watch connects the store to what it saves: state returns the document
// (the host's State) and lock runs a function with no change half made
// (the host's change lock), for writes that do not come from a change (a
// retry, Flush). Until Watch is called nothing is written: connect it once
// the host holds everything the state file recorded, so that no write can
// record a restore half done.
func (s *Store) Watch(state func() any, lock func(func() error) error) {
	s.watched.Store(&watch{state: state, lock: lock})
}

// Changed is the host's change hook: it is called with the host's change
// lock held, writes the state now and returns the write's error.
func (s *Store) Changed() error {
	w := s.watched.Load()
	if w == nil {
		return nil
	}
	return s.save(w.state())
}

// Flush writes the state now, under the host's change lock. Before Watch
// it writes nothing.
func (s *Store) Flush() error {
	w := s.watched.Load()
	if w == nil {
		return nil
	}
	return w.lock(func() error { return s.save(w.state()) })
}

// Err returns why the last write failed, or nil after a successful one.
func (s *Store) Err() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Run retries a failed write every RetryInterval until ctx ends, so that
// the store recovers (and the host turns ready again) once the directory
// is writable, even when no change comes.
func (s *Store) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if s.Err() != nil {
				_ = s.Flush() // save logs the outcome
			}
		}
	}
}

// save writes doc as the state file and records the outcome.
func (s *Store) save(doc any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := json.MarshalIndent(doc, "", "  ")
	if err == nil {
		err = writeAtomic(s.Path(), data)
	}
	if err != nil {
		err = fmt.Errorf("state directory %s: writing %s: %w", s.dir, StateFile, err)
		s.failed(err)
		return err
	}
	s.saves.Inc()
	if s.lastErr.Swap(nil) != nil {
		s.failing.Set(0)
		s.log.Info("state saved again: the state directory is writable")
	}
	return nil
}

// failed records a failed write.
func (s *Store) failed(err error) {
	s.failures.Inc()
	s.failing.Set(1)
	if s.lastErr.Swap(&err) == nil {
		s.log.Error("state directory failing: changes are refused until a write succeeds", slog.Any("err", err))
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
	syncDir(dir)
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
