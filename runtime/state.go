package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/placement"
)

// maxLayerID is the largest layer id Restore accepts from a state file:
// ids are handed out from 0 up, and this bound keeps the next one (and the
// layer_id of health signals) far from overflow.
const maxLayerID = 1<<31 - 1

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
	Name      string                    `json:"name"`
	SHA256    string                    `json:"sha256"`
	Source    string                    `json:"source,omitempty"`
	Compiled  *contracts.CompiledKernel `json:"compiled,omitempty"`
	Layer     string                    `json:"layer"`
	SeedIdx   int                       `json:"seed_idx"`
	Fallback  string                    `json:"cpu_fallback"`
	Placement string                    `json:"placement"`
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

// SetArtifactStore makes every load keep its artifact's bytes in store
// before it succeeds, so that State can be restored.
func (h *Host) SetArtifactStore(s ArtifactStore) {
	h.mu.Lock()
	h.artifacts = s
	h.mu.Unlock()
}

func (h *Host) keepArtifact(data []byte) error {
	h.mu.RLock()
	s := h.artifacts
	h.mu.RUnlock()
	if s == nil {
		return nil
	}
	sum := sha256.Sum256(data)
	return s.Put(hex.EncodeToString(sum[:]), data)
}

// State returns the host's state now.
func (h *Host) State() State {
	st := State{Version: StateVersion, SavedAt: h.cfg.Now().UTC(), Layers: map[string]int{}}
	h.mu.RLock()
	for name, id := range h.seeds.layers {
		st.Layers[name] = id
	}
	for k, s := range h.seeds.seeds {
		st.Seeds = append(st.Seeds, SeedRecord{Layer: k.layer, SeedIdx: k.idx, Seed: s.Seed, Alpha: s.alpha})
	}
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
			Compiled: l.compiled, Layer: l.seed.layer, SeedIdx: l.seed.idx, Fallback: l.fallback.String(), Placement: dev})
	}
	sort.Slice(st.Seeds, func(i, j int) bool {
		if st.Seeds[i].Layer != st.Seeds[j].Layer {
			return st.Seeds[i].Layer < st.Seeds[j].Layer
		}
		return st.Seeds[i].SeedIdx < st.Seeds[j].SeedIdx
	})
	sort.Slice(st.Kernels, func(i, j int) bool { return st.Kernels[i].Name < st.Kernels[j].Name })
	return st
}

// Restore brings back a saved State: the layer mapping and seeds first,
// then each kernel from the artifact store, re-placed against the devices
// now (a placement can differ from the one saved; the kernel's moves say
// so). Kernels that cannot come back are listed as failed loads. It
// returns how many kernels were restored.
func (h *Host) Restore(ctx context.Context, st State, store ArtifactStore) (int, error) {
	if st.Version != StateVersion {
		return 0, failure.Errorf(failure.Malformed, "state version %d, this host reads %d", st.Version, StateVersion)
	}
	h.mu.Lock()
	// Layer ids name layers on the bus: a damaged file must not give two
	// layers one id. Names are taken in order, so the outcome does not
	// depend on map iteration.
	names := make([]string, 0, len(st.Layers))
	for name := range st.Layers {
		names = append(names, name)
	}
	sort.Strings(names)
	taken := make(map[int]string, len(h.seeds.layers)+len(names))
	for name, id := range h.seeds.layers {
		taken[id] = name
	}
	for _, name := range names {
		id := st.Layers[name]
		other, dup := taken[id]
		_, known := h.seeds.layers[name]
		switch {
		case id < 0 || id > maxLayerID:
			h.log.Warn("state: layer id out of range, layer gets a new id", slog.String("layer", name), slog.Int("layer_id", id))
			continue
		case known:
			continue // registered before the restore: keeps its id
		case dup:
			h.log.Warn("state: layer id already taken, layer gets a new id", slog.String("layer", name),
				slog.Int("layer_id", id), slog.String("taken_by", other))
			continue
		}
		taken[id] = name
		h.seeds.layers[name] = id
		if id >= h.seeds.next {
			h.seeds.next = id + 1
		}
	}
	for _, rec := range st.Seeds {
		err := rec.Seed.Validate()
		if err == nil && rec.SeedIdx < 0 {
			err = fmt.Errorf("seed_idx %d is negative", rec.SeedIdx)
		}
		if err != nil {
			h.log.Warn("state: seed not restored", slog.String("layer", rec.Layer), slog.Int("seed_idx", rec.SeedIdx), slog.Any("err", err))
			continue
		}
		alpha := rec.Alpha
		if !(alpha >= 0 && alpha <= 1) {
			h.log.Warn("state: seed alpha outside [0, 1], clamped", slog.String("layer", rec.Layer), slog.Int("seed_idx", rec.SeedIdx), slog.Float64("alpha", alpha))
			alpha = max(0, min(1, alpha)) // JSON holds no NaN
		}
		s := &seed{Seed: rec.Seed, alpha: alpha, alphaSetAt: h.cfg.Now()}
		s.LayerID = h.seeds.registerLayer(rec.Layer)
		h.seeds.seeds[seedKey{rec.Layer, rec.SeedIdx}] = s
	}
	h.mu.Unlock()

	restored := 0
	for _, rec := range st.Kernels {
		if ctx.Err() != nil {
			return restored, ctx.Err()
		}
		data, err := store.Get(rec.SHA256)
		if err == nil {
			// The bytes must be the ones saved: a flipped bit on disk is
			// refused, not served.
			if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != rec.SHA256 {
				err = failure.Errorf(failure.Malformed, "%s is damaged: its SHA-256 is %s, it was saved as %s",
					store.Where(rec.SHA256), hex.EncodeToString(sum[:]), rec.SHA256)
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
		v, err := h.Load(ctx, LoadRequest{Name: rec.Name, Data: data, Ref: store.Where(rec.SHA256), Origin: rec.Source,
			Compiled: rec.Compiled, Fallback: fb, Layer: layer, SeedIdx: rec.SeedIdx})
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
