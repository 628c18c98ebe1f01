package runtime

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strings"

	"github.com/esper/kasmina-host/kernels"
)

// Repository is a directory of kernel artifacts the host serves from: every
// *.safetensors file under it (recursively) whose metadata says
// format: esper-kernel/v1, named by the kernel_id of its embedded
// esper.kernel_metadata, else by its file name without the extension.
// Other safetensors files (a golden case's io.safetensors, say) are skipped
// with one log line each.
type Repository struct {
	FS fs.FS
	// Where names the repository in logs ("examples (embedded)", a path).
	Where string
}

// RepoEntry is one kernel file found in a repository.
type RepoEntry struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// Scan lists the repository's kernels, sorted by name. A file that claims
// the format but whose header cannot be read is still listed (its load
// will fail and say why); two files with the same name keep the first path
// in lexical order and log the other.
func (r Repository) Scan(log *slog.Logger) ([]RepoEntry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var out []RepoEntry
	seen := map[string]string{}
	err := fs.WalkDir(r.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			log.Warn("kernel repository: cannot read", slog.String("path", p), slog.Any("err", err))
			if d != nil && d.IsDir() && p != "." {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".safetensors") {
			return nil
		}
		format, id, herr := peekHeader(r.FS, p)
		switch {
		case herr != nil && format == "":
			log.Info("kernel repository: skipping a file that is not an esper-kernel/v1 safetensors file",
				slog.String("path", p), slog.Any("err", herr))
			return nil
		case format != kernels.FormatV1:
			log.Info("kernel repository: skipping safetensors file without format esper-kernel/v1",
				slog.String("path", p), slog.String("format", format))
			return nil
		}
		name := id
		if name == "" {
			name = strings.TrimSuffix(path.Base(p), ".safetensors")
		}
		if prev, dup := seen[name]; dup {
			log.Warn("kernel repository: two files share a kernel name; keeping the first",
				slog.String("name", name), slog.String("kept", prev), slog.String("skipped", p))
			return nil
		}
		seen[name] = p
		out = append(out, RepoEntry{Name: name, Path: p})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// peekHeader reads only the safetensors header of p and returns its format
// and embedded kernel id. A header that cannot be parsed returns an error
// and format "" (not a kernel file), unless the format is visible, in
// which case the file is a broken kernel and the loader reports why.
func peekHeader(fsys fs.FS, p string) (format, kernelID string, err error) {
	f, err := fsys.Open(p)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	var n [8]byte
	if _, err := io.ReadFull(f, n[:]); err != nil {
		return "", "", fmt.Errorf("reading the header length: %w", err)
	}
	size := binary.LittleEndian.Uint64(n[:])
	if size == 0 || size > kernels.MaxHeaderBytes {
		return "", "", fmt.Errorf("header length %d out of range", size)
	}
	hdr := make([]byte, size)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", "", fmt.Errorf("reading a %d-byte header: %w", size, err)
	}
	var h struct {
		Meta map[string]any `json:"__metadata__"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		return "", "", fmt.Errorf("header is not JSON: %w", err)
	}
	format, _ = h.Meta[kernels.MetaFormat].(string)
	if raw, ok := h.Meta["esper.kernel_metadata"].(string); ok {
		var md struct {
			KernelID string `json:"kernel_id"`
		}
		if json.Unmarshal([]byte(raw), &md) == nil {
			kernelID = md.KernelID
		}
	}
	return format, kernelID, nil
}

// SetRepository sets where LoadRepository and LoadModel read kernels from.
func (h *Host) SetRepository(r Repository) {
	h.mu.Lock()
	h.repo = &r
	h.mu.Unlock()
}

// LoadRepository scans the repository and loads every kernel in it; a
// kernel that fails is listed (FailedLoads) with the reason and the others
// serve. It returns how many loaded and how many failed.
func (h *Host) LoadRepository(ctx context.Context) (loadedN, failedN int, err error) {
	h.mu.RLock()
	repo := h.repo
	h.mu.RUnlock()
	if repo == nil {
		return 0, 0, nil
	}
	entries, err := repo.Scan(h.log)
	if err != nil {
		return 0, 0, fmt.Errorf("scanning %s: %w", repo.Where, err)
	}
	h.mu.Lock()
	for _, e := range entries {
		h.repoIndex[e.Name] = e.Path
	}
	h.mu.Unlock()
	for _, e := range entries {
		if ctx.Err() != nil {
			return loadedN, failedN, ctx.Err()
		}
		if _, ok := h.Kernel(e.Name); ok {
			loadedN++ // restored from the state directory already
			continue
		}
		if err := h.LoadModel(ctx, e.Name); err != nil {
			failedN++
			h.log.Warn("kernel not loaded", slog.String("kernel", e.Name), slog.String("path", e.Path), slog.Any("err", err))
			continue
		}
		loadedN++
	}
	return loadedN, failedN, nil
}

// LoadModel loads (or reloads) the named kernel from the repository.
func (h *Host) LoadModel(ctx context.Context, name string) error {
	h.mu.RLock()
	repo := h.repo
	p, ok := h.repoIndex[name]
	h.mu.RUnlock()
	if repo == nil || !ok {
		return fmt.Errorf("%w: no kernel %q in the repository", ErrNotFound, name)
	}
	data, err := readCapped(repo.FS, p, h.cfg.MaxArtifactBytes)
	if err != nil {
		h.recordFailure(name, err)
		return fmt.Errorf("%w: reading %s: %w", ErrRefused, p, err)
	}
	_, err = h.Load(ctx, LoadRequest{Name: name, Data: data, Ref: path.Join(repo.Where, p), Replace: true})
	if err != nil {
		h.recordFailure(name, err)
	}
	return err
}

// RepositoryIndex lists every kernel the host knows: the repository's,
// loaded or not, and kernels loaded from elsewhere.
func (h *Host) RepositoryIndex() []ModelState {
	h.mu.RLock()
	names := map[string]bool{}
	for n := range h.repoIndex {
		names[n] = true
	}
	for n := range h.kernels {
		names[n] = true
	}
	for n := range h.failed {
		names[n] = true
	}
	out := make([]ModelState, 0, len(names))
	for n := range names {
		st := ModelState{Name: n}
		switch _, loaded := h.kernels[n]; {
		case loaded:
			st.State = "READY"
		case h.failed[n] != "":
			st.State, st.Reason = "UNAVAILABLE", h.failed[n]
		default:
			st.State, st.Reason = "UNAVAILABLE", "unloaded"
		}
		out = append(out, st)
	}
	h.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ModelState is one repository index entry.
type ModelState struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Ready reports whether the node can serve: the start-up scan has
// finished. With the CPU executor always present, a loaded kernel can
// always be served somewhere; one kernel whose circuit breaker is open is
// that kernel's unreadiness (its view, its model readiness and
// kasmina_kernel_breaker_open), never the node's, which would take every
// other kernel on the node out of service.
func (h *Host) Ready() (bool, string) {
	if !h.started.Load() {
		return false, "loading the kernel repository"
	}
	return true, ""
}

// MarkStarted declares the start-up scan finished (readiness may turn
// true).
func (h *Host) MarkStarted() { h.started.Store(true) }

// readCapped reads a repository file, refusing it by its size before
// reading when it is larger than limit bytes (and while reading, should it
// grow).
func readCapped(fsys fs.FS, p string, limit int64) ([]byte, error) {
	f, err := fsys.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > limit {
		return nil, fmt.Errorf("%d bytes, over the %d-byte artifact limit", st.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("over the %d-byte artifact limit", limit)
	}
	return data, nil
}
