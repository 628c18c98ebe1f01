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

// State is what the host records to come back after a restart: the
// layers with their declarations, every seed slot, every loaded kernel
// with where it came from, the artifact pins and the epoch. The kernels'
// bytes are kept by content hash (ArtifactStore), so a restart needs
// neither the original path nor the network.
type State struct {
	Version int       `json:"version"`
	SavedAt time.Time `json:"saved_at"`
	// Layers maps each layer name to its id, as states written before
	// layer declarations recorded them (a restore reads it when
	// Declared is absent).
	Layers map[string]int `json:"layers"`
	// Declared is every layer's declaration.
	Declared []LayerRecord  `json:"declared_layers,omitempty"`
	Seeds    []SeedRecord   `json:"seeds"`
	Kernels  []KernelRecord `json:"kernels"`
	// Pins maps each Urza artifact id loaded without a checksum to the
	// SHA-256 its bytes had when first loaded (trust on first use).
	Pins map[string]string `json:"pins,omitempty"`
	// Epoch is the latest training epoch system.events.epoch announced.
	Epoch int64 `json:"epoch"`
}

// LayerRecord is one layer's declaration in the State.
type LayerRecord struct {
	Name    string `json:"layer_name"`
	LayerID int    `json:"layer_id"`
	// IDDeclared is true when the owner gave the id.
	IDDeclared  bool       `json:"layer_id_declared,omitempty"`
	NumSeeds    int        `json:"num_seeds"`
	InputShape  []int      `json:"input_shape,omitempty"`
	OutputShape []int      `json:"output_shape,omitempty"`
	DeclaredBy  DeclaredBy `json:"declared_by"`
	// Direct marks a directly served kernel's own layer.
	Direct bool `json:"direct,omitempty"`
}

// SeedRecord is one seed slot in the State: the seed it holds and the
// seeds culled before it.
type SeedRecord struct {
	Layer      string         `json:"layer"`
	SeedIdx    int            `json:"seed_idx"`
	Seed       contracts.Seed `json:"seed"`
	Alpha      float64        `json:"alpha"`
	ArtifactID string         `json:"artifact_id,omitempty"`
	History    []SeedHistory  `json:"history,omitempty"`
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
	// ArtifactID is what a seed's kernel was loaded from (load_kernel's
	// artifact_id), when it differs from Source.
	ArtifactID string `json:"artifact_id,omitempty"`
	Layer      string `json:"layer"`
	SeedIdx    int    `json:"seed_idx"`
	Fallback   string `json:"cpu_fallback"`
	Placement  string `json:"placement"`
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
	st := State{Version: StateVersion, SavedAt: h.cfg.Now().UTC(), Pins: h.pins.all(), Epoch: h.epoch.Load()}
	st.Declared, st.Seeds = h.book.records()
	st.Layers = make(map[string]int, len(st.Declared))
	for _, l := range st.Declared {
		st.Layers[l.Name] = l.LayerID
	}
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
		rec := KernelRecord{Name: l.name, SHA256: l.kernel.SHA256(), Source: src,
			Compiled: l.compiled, MetadataFrom: l.metadataFrom, Layer: l.seed.layer, SeedIdx: l.seed.idx, Fallback: l.fallback.String(), Placement: dev}
		if l.artifact != src {
			rec.ArtifactID = l.artifact
		}
		st.Kernels = append(st.Kernels, rec)
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
	declared := st.Declared
	if len(declared) == 0 {
		declared = legacyLayers(st, h.log)
	}
	h.book.restore(declared, st.Seeds, h.cfg.Now(), h.log)
	h.pins.restore(st.Pins, h.log)
	if st.Epoch > 0 {
		h.epoch.Store(st.Epoch)
	}

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
		artifact := rec.ArtifactID
		if artifact == "" {
			artifact = rec.Source
		}
		v, err := h.Load(ctx, LoadRequest{Name: rec.Name, Data: data, sha256: rec.SHA256, Ref: store.Where(rec.SHA256), Origin: rec.Source,
			Compiled: rec.Compiled, MetadataFrom: metadataFrom(rec), Fallback: fb, Layer: layer, SeedIdx: rec.SeedIdx, artifact: artifact})
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

// legacyLayers reads the layers of a state written before layer
// declarations: each name its Layers map, its seeds or its kernels give
// becomes a layer declared by a kernel, with the stable id of its name
// (the ids such states hold were numbered per host in registration
// order, the collision stable ids end) and enough slots for its seeds
// (DefaultNumSeeds at least; a directly served kernel's own layer, one).
func legacyLayers(st State, log *slog.Logger) []LayerRecord {
	slots := map[string]int{}
	direct := map[string]bool{}
	for name := range st.Layers {
		slots[name] = 0
	}
	for _, s := range st.Seeds {
		if s.SeedIdx >= 0 && s.SeedIdx < MaxSeeds {
			slots[s.Layer] = max(slots[s.Layer], s.SeedIdx+1)
		}
	}
	for _, k := range st.Kernels {
		if k.Layer == k.Name && k.SeedIdx == 0 {
			direct[k.Layer] = true
		}
	}
	var out []LayerRecord
	for name, n := range slots {
		rec := LayerRecord{Name: name, LayerID: LayerIDOf(name), NumSeeds: max(n, DefaultNumSeeds), DeclaredBy: ByKernel}
		if direct[name] && n <= 1 {
			rec.NumSeeds, rec.Direct = 1, true
		}
		if old, ok := st.Layers[name]; ok && old != rec.LayerID {
			log.Info("state: layer ids are now stable (FNV-1a of the name): the layer's id changes",
				slog.String("layer", name), slog.Int("was", old), slog.Int("now", rec.LayerID))
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
