package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/placement"
)

// StateVersion is the version of the State document.
const StateVersion = 1

// State is what the host records to come back after a restart: the layer
// mapping, every seed and every loaded kernel with where it came from. The
// kernels' bytes are kept by content hash (ArtifactStore), so a restart
// needs neither the original path nor the network.
type State struct {
	Version int            `json:"version"`
	SavedAt time.Time      `json:"saved_at"`
	Layers  map[string]int `json:"layers"`
	Seeds   []SeedRecord   `json:"seeds"`
	Kernels []KernelRecord `json:"kernels"`
}

// SeedRecord is one seed in the State.
type SeedRecord struct {
	Layer   string         `json:"layer"`
	SeedIdx int            `json:"seed_idx"`
	Seed    contracts.Seed `json:"seed"`
	Alpha   float64        `json:"alpha"`
}

// KernelRecord is one loaded kernel in the State.
type KernelRecord struct {
	Name     string                    `json:"name"`
	SHA256   string                    `json:"sha256"`
	Source   string                    `json:"source,omitempty"`
	Compiled *contracts.CompiledKernel `json:"compiled,omitempty"`
	// MetadataFrom is "artifact" when Compiled is Urza's flat record
	// (LoadRequest.MetadataFrom); omitted for the document's metadata.
	MetadataFrom MetadataSource `json:"metadata_from,omitempty"`
	Layer        string         `json:"layer"`
	SeedIdx      int            `json:"seed_idx"`
	Fallback     string         `json:"cpu_fallback"`
	Placement    string         `json:"placement"`
}

// ArtifactStore keeps kernel bytes by SHA-256 for restarts.
type ArtifactStore interface {
	// Put keeps data under sha, its SHA-256 in lowercase hex.
	Put(sha string, data []byte) error
	// Get returns the bytes kept under sha. Restore checks them against
	// sha: a store need not.
	Get(sha string) ([]byte, error)
	// Where says where the bytes kept under sha are (a path), for the
	// kernel's view and the logs.
	Where(sha string) string
}

// State returns the host's state now.
func (h *Host) State() State {
	st := State{Version: StateVersion, SavedAt: h.cfg.Now().UTC()}
	st.Layers, st.Seeds = h.book.records()
	h.mu.RLock()
	ls := make([]*loaded, 0, len(h.kernels))
	for _, l := range h.kernels {
		ls = append(ls, l)
	}
	h.mu.RUnlock()
	for _, l := range ls {
		l.mu.Lock()
		dev := l.decision.Device
		l.mu.Unlock()
		src := l.source
		if l.origin != "" {
			src = l.origin // a restored kernel keeps the reference it was first loaded from
		}
		st.Kernels = append(st.Kernels, KernelRecord{Name: l.name, SHA256: l.kernel.SHA256(), Source: src,
			Compiled: l.compiled, MetadataFrom: l.metadataFrom, Layer: l.seed.layer, SeedIdx: l.seed.idx, Fallback: l.fallback.String(), Placement: dev})
	}
	sort.Slice(st.Kernels, func(i, j int) bool { return st.Kernels[i].Name < st.Kernels[j].Name })
	return st
}

// Restore brings back a saved State: the layer mapping and seeds first,
// then each kernel from the state store's artifacts, re-placed against the
// devices now (a placement can differ from the one saved; the kernel's
// moves say so). Kernels that cannot come back are listed as failed loads.
// It returns how many kernels were restored. Nothing is saved while it
// runs (a state written then would record a restore half done): Run saves
// the state once the start-up is over. Call it before Run.
func (h *Host) Restore(ctx context.Context, st State) (int, error) {
	if st.Version != StateVersion {
		return 0, failure.Errorf(failure.Malformed, "state version %d, this host reads %d", st.Version, StateVersion)
	}
	store := h.store
	if store == nil {
		return 0, failure.Errorf(failure.Refused, "no state store to restore kernels from")
	}
	h.restoring.Store(true)
	defer h.restoring.Store(false)
	h.book.restore(st.Layers, st.Seeds, h.cfg.Now(), h.log)

	restored := 0
	for _, rec := range st.Kernels {
		if ctx.Err() != nil {
			return restored, ctx.Err()
		}
		data, err := store.Get(rec.SHA256)
		if err == nil {
			// The bytes must be the ones saved: a flipped bit on disk is
			// refused, not served. This digest is the load's one.
			if sum := orDigest("", data); sum != rec.SHA256 {
				err = failure.Errorf(failure.Malformed, "%s is damaged: its SHA-256 is %s, it was saved as %s",
					store.Where(rec.SHA256), sum, rec.SHA256)
			}
		} else {
			err = classify(fmt.Errorf("restoring from the state directory: %w", err), failure.Unavailable)
		}
		if err != nil {
			h.recordFailure(rec.Name, err)
			h.log.Error("state: kernel not restored", slog.String("kernel", rec.Name), slog.Any("err", err))
			continue
		}
		var fb *placement.Fallback
		if f, err := placement.ParseFallback(rec.Fallback); err == nil {
			fb = &f
		}
		layer := rec.Layer
		if layer == rec.Name && rec.SeedIdx == 0 {
			layer = "" // served directly: its own seed
		}
		v, err := h.Load(ctx, LoadRequest{Name: rec.Name, Data: data, sha256: rec.SHA256, Ref: store.Where(rec.SHA256), Origin: rec.Source,
			Compiled: rec.Compiled, MetadataFrom: metadataFrom(rec), Fallback: fb, Layer: layer, SeedIdx: rec.SeedIdx})
		if err != nil {
			h.recordFailure(rec.Name, err)
			h.log.Warn("state: kernel not restored", slog.String("kernel", rec.Name), slog.Any("err", err))
			continue
		}
		if v.Placement.Device != rec.Placement {
			h.log.Info("state: kernel restored on another device", slog.String("kernel", rec.Name),
				slog.String("was", rec.Placement), slog.String("now", v.Placement.Device))
		}
		restored++
	}
	return restored, nil
}

// metadataFrom is where a saved kernel's metadata comes from. State files
// written before MetadataFrom existed marked Urza's flat record inside the
// document, as validation_results.metadata_from = "artifact": that marker
// is read here, and only here, so that such kernels still restore.
func metadataFrom(rec KernelRecord) MetadataSource {
	if rec.MetadataFrom == FromDocument && rec.Compiled != nil {
		if v, _ := rec.Compiled.ValidationResults.Get("metadata_from"); v == "artifact" {
			return FromArtifact
		}
	}
	return rec.MetadataFrom
}
