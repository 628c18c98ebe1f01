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
// The host (runtime.Host, whose StateStore this is) calls Save after every
// change, with its change lock held: Save writes before it returns and
// returns the write's error, which makes the host refuse and undo the
// change, so nothing is acknowledged that was not saved. The host
// coalesces the many loads of its start-up scan into one Save, and saves
// nothing while it restores from this directory (runtime.Host.Restore): a
// state written then would record a restore half done.
//
// While writes fail, Err says why (the host's readiness shows it, and the
// host saves again every signal interval until a write succeeds), and the
// failures are counted (kasmina_state_save_failures_total) and flagged
// (kasmina_state_store_failing).
//
// A state file that cannot be used (unreadable, not JSON, a version this
// build does not read) is never overwritten: Read returns an
// *UnreadableError and the caller refuses to start, unless told to
// MoveAside.
package statedir

import (
	"bytes"
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

// DefaultMaxArtifactBytes caps what Get reads back unless Options say
// otherwise (the artifact sources cap fetches at 256 MiB).
const DefaultMaxArtifactBytes = 1 << 30

// Options tune a Store. Zero values take the defaults.
type Options struct {
	// Logger receives save failures and recoveries (default: discard).
	Logger *slog.Logger
	// MaxArtifactBytes caps an artifact read back by Get.
	MaxArtifactBytes int64
}

// Store is a state directory. Create it with Open.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

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

// Where returns the path an artifact is kept at (runtime.StateStore).
func (s *Store) Where(sha string) string {
	return filepath.Join(s.dir, ArtifactsDir, sha+".kernel")
}

// Put keeps an artifact's bytes under their SHA-256 (runtime.StateStore).
// A failure counts as a failed write: the load that needed it is refused.
func (s *Store) Put(sha string, data []byte) error {
	p, err := s.artifactPath(sha)
	if err != nil {
		return err
	}
	if kept, err := regularfile.ReadFile(p, int64(len(data))); err == nil && bytes.Equal(kept, data) {
		return nil // already kept, and intact (its name is the hash of data)
	}
	if err := writeAtomic(p, data); err != nil {
		err = fmt.Errorf("state directory %s: keeping artifact %s: %w", s.dir, sha, err)
		s.failed(err)
		return err
	}
	return nil
}

// Get returns a kept artifact's bytes (runtime.StateStore). It reads
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

// Save writes doc as the state file, atomically, before it returns, and
// returns the write's error (runtime.StateStore).
func (s *Store) Save(doc any) error { return s.save(doc) }

// Err returns why the last write failed, or nil after a successful one.
func (s *Store) Err() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
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
