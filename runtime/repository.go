package runtime

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/esper/kasmina-host/internal/regularfile"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Repository is a directory of kernel artifacts the host serves from: every
// *.safetensors file under it (recursively) whose metadata says
// format: esper-kernel/v1, named by the kernel_id of its embedded
// esper.kernel_metadata, else by its file name without the extension.
// Other safetensors files (a golden case's io.safetensors, say) are skipped
// with one log line each. A *.safetensors path that cannot be opened (a
// named pipe or another file that is not a regular one, a symbolic link
// leading outside the directory) is listed as a failed load with the
// reason, named by its file name.
type Repository struct {
	FS fs.FS
	// Where names the repository in logs ("examples (embedded)", a path).
	Where string
}

// OpenRepository opens the directory dir as a Repository. Its files are
// read through os.Root, which refuses a path or a symbolic link leading
// outside dir, and only when they are regular files, opened without
// blocking (internal/regularfile): a named pipe among the kernels cannot
// hang the scan. The directory stays open for the life of the process.
func OpenRepository(dir string) (Repository, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Repository{}, fmt.Errorf("kernel directory: %w", err)
	}
	return Repository{FS: regularfile.FS(root), Where: dir}, nil
}

// repoEntry is one kernel file found in a repository.
type repoEntry struct {
	Name string
	Path string
	// Err is why the file could not be opened (it is then named by its
	// file name).
	Err error
}

// scan lists the repository's kernels, sorted by name. A file that claims
// the format but whose header cannot be read is still listed (its load
// will fail and say why), and so is one that cannot be opened, with Err
// set; two files with the same name keep the first path in lexical order
// and log the other.
func (r Repository) scan(log *slog.Logger) ([]repoEntry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var out []repoEntry
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
		fileName := strings.TrimSuffix(path.Base(p), ".safetensors")
		format, id, herr := r.peekHeader(p)
		var openErr *repoOpenError
		switch {
		case errors.As(herr, &openErr):
			log.Warn("kernel repository: cannot open", slog.String("path", p), slog.Any("err", herr))
			id, herr = "", openErr.err
		case herr != nil && format == "":
			log.Info("kernel repository: skipping a file that is not an esper-kernel/v1 safetensors file",
				slog.String("path", p), slog.Any("err", herr))
			return nil
		case format != kernels.FormatV1:
			log.Info("kernel repository: skipping safetensors file without format esper-kernel/v1",
				slog.String("path", p), slog.String("format", format))
			return nil
		default:
			herr = nil
		}
		name := id
		if name == "" {
			name = fileName
		}
		if prev, dup := seen[name]; dup {
			log.Warn("kernel repository: two files share a kernel name; keeping the first",
				slog.String("name", name), slog.String("kept", prev), slog.String("skipped", p))
			return nil
		}
		seen[name] = p
		out = append(out, repoEntry{Name: name, Path: p, Err: herr})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// repoOpenError marks peekHeader's failure to open a file (as opposed to
// reading its header).
type repoOpenError struct{ err error }

func (e *repoOpenError) Error() string { return e.err.Error() }

// openError describes why p could not be opened, naming it inside the
// repository.
func (r Repository) openError(p string, err error) error {
	where := path.Join(r.Where, p)
	var nr *regularfile.NotRegularError
	switch {
	case errors.As(err, &nr):
		return failure.Errorf(failure.Refused, "%s is a %s, not a regular file", where, regularfile.TypeName(nr.Mode))
	case errors.Is(err, regularfile.ErrOutsideRoot):
		return failure.Errorf(failure.Refused, "%s leads outside the kernel directory %s", where, r.Where)
	}
	return classify(fmt.Errorf("opening %s: %w", where, err), failure.Unavailable)
}

// peekHeader reads only the safetensors header of p and returns its format
// and embedded kernel id. A header that cannot be parsed returns an error
// and format "" (not a kernel file), unless the format is visible, in
// which case the file is a broken kernel and the loader reports why. A
// file that cannot be opened returns a *repoOpenError. No error quotes the
// file's bytes.
func (r Repository) peekHeader(p string) (format, kernelID string, err error) {
	f, err := r.FS.Open(p)
	if err != nil {
		return "", "", &repoOpenError{r.openError(p, err)}
	}
	defer f.Close()
	var n [8]byte
	if _, err := io.ReadFull(f, n[:]); err != nil {
		return "", "", fmt.Errorf("reading the header length: %w", err)
	}
	size := binary.LittleEndian.Uint64(n[:])
	if size == 0 || size > kernels.MaxHeaderBytes {
		return "", "", fmt.Errorf("the header length at byte 0 is out of range (1 to %d bytes)", kernels.MaxHeaderBytes)
	}
	hdr := make([]byte, size)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", "", fmt.Errorf("reading a %d-byte header: %w", size, err)
	}
	var h struct {
		Meta map[string]any `json:"__metadata__"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		// The decoder's message may quote the file's bytes.
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return "", "", fmt.Errorf("the header is not JSON (syntax error at header byte %d)", syn.Offset)
		}
		return "", "", errors.New("the header is not a JSON object with a __metadata__ object")
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

// loadRepository scans the repository and loads every kernel in it (Run's
// start-up); a kernel that fails is listed (Models) with the reason
// and the others serve. It returns how many loaded and how many failed.
// The state is saved once, after the scan, rather than once per kernel:
// the scan acknowledges nothing to anyone, and a directory of many kernels
// would otherwise write the state as many times. A failure of that one
// save is logged (the state store reports it); the kernels keep serving.
func (h *Host) loadRepository(ctx context.Context) (loadedN, failedN int, err error) {
	repo := h.repo
	if repo == nil {
		return 0, 0, nil
	}
	entries, err := repo.scan(h.log)
	if err != nil {
		return 0, 0, fmt.Errorf("scanning %s: %w", repo.Where, err)
	}
	h.mu.Lock()
	for _, e := range entries {
		h.repoIndex[e.Name] = e.Path
	}
	h.mu.Unlock()
	changed := false
	defer func() {
		if !changed {
			return
		}
		h.changeMu.Lock()
		defer h.changeMu.Unlock()
		if err := h.saveChange(); err != nil {
			h.log.Error("kernels loaded from the repository are not saved", slog.Int("kernels", loadedN), slog.Any("err", err))
		}
	}()
	for _, e := range entries {
		if ctx.Err() != nil {
			return loadedN, failedN, ctx.Err()
		}
		if e.Err != nil {
			failedN++
			h.recordFailure(e.Name, e.Err)
			continue
		}
		if _, ok := h.Kernel(e.Name); ok {
			loadedN++ // restored from the state directory already
			continue
		}
		if err := h.loadModel(ctx, e.Name, true); err != nil {
			failedN++
			h.log.Warn("kernel not loaded", slog.String("kernel", e.Name), slog.String("path", e.Path), slog.Any("err", err))
			continue
		}
		loadedN++
		changed = true
	}
	return loadedN, failedN, nil
}

// LoadModel loads (or reloads) the named kernel from the repository.
func (h *Host) LoadModel(ctx context.Context, name string) error {
	return h.loadModel(ctx, name, false)
}

// loadModel is LoadModel; batch leaves saving to the caller (the
// repository scan).
func (h *Host) loadModel(ctx context.Context, name string, batch bool) error {
	repo := h.repo
	h.mu.RLock()
	p, ok := h.repoIndex[name]
	h.mu.RUnlock()
	if repo == nil || !ok {
		return failure.Errorf(failure.NotFound, "no kernel %q in the repository", name)
	}
	data, err := repo.readCapped(p, h.cfg.MaxArtifactBytes)
	if err != nil {
		h.recordFailure(name, err)
		return err
	}
	_, err = h.Load(ctx, LoadRequest{Name: name, Data: data, Ref: path.Join(repo.Where, p), Replace: true, batch: batch})
	if err != nil {
		h.recordFailure(name, err)
	}
	return err
}

// Models lists every kernel the host knows, sorted by name: loaded (from
// the repository or elsewhere), in the repository but not loaded, or whose
// last load failed, with the reason. It is the repository index of the
// model repository API.
func (h *Host) Models() []ModelState {
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
			st.Status = ModelLoaded
		case h.failed[n] != "":
			st.Status, st.Reason = ModelFailed, h.failed[n]
		default:
			st.Status = ModelUnloaded
		}
		out = append(out, st)
	}
	h.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ModelState is one kernel the host knows (Models).
type ModelState struct {
	Name   string
	Status ModelStatus
	// Reason is why the last load failed (ModelFailed).
	Reason string
}

// ModelStatus is where a kernel the host knows stands.
type ModelStatus uint8

// Model statuses.
const (
	// ModelLoaded: loaded and serving.
	ModelLoaded ModelStatus = iota
	// ModelUnloaded: in the repository, not loaded.
	ModelUnloaded
	// ModelFailed: its last load failed.
	ModelFailed
)

// readCapped reads a repository file, refusing it by its size before
// reading when it is larger than limit bytes (and while reading, should it
// grow).
func (r Repository) readCapped(p string, limit int64) ([]byte, error) {
	f, err := r.FS.Open(p)
	if err != nil {
		return nil, r.openError(p, err)
	}
	defer f.Close()
	where := path.Join(r.Where, p)
	if st, err := f.Stat(); err == nil && st.Size() > limit {
		return nil, failure.Errorf(failure.TooLarge, "%s is %d bytes, over the %d-byte artifact limit", where, st.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, classify(fmt.Errorf("reading %s: %w", where, err), failure.Unavailable)
	}
	if int64(len(data)) > limit {
		return nil, failure.Errorf(failure.TooLarge, "%s grew past the %d-byte artifact limit while being read", where, limit)
	}
	return data, nil
}
