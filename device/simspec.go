package device

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
)

// SimSpec describes a simulated node: its GPUs (with MIG instances) and the
// faults to inject over time. It is the format of `--simulate FILE.json`,
// documented in SIMULATE.md, in brief:
//
//	{"driver_version": "550.54.15", "cuda_driver_version": "12.4",
//	 "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0",
//	           "memory": {"total_bytes": 42949672960, "used_bytes": 1073741824, "reserved_bytes": 536870912},
//	           "utilization": {"gpu_percent": 40}, "temperature_c": 45, "power_w": 180,
//	           "mig": [{"profile": "3g.20gb", "gpu_instance_id": 1, "memory": {"total_bytes": 20937965568}}]}],
//	 "faults": [{"at": "30s", "gpu": 0, "kind": "xid", "xid": 79},
//	            {"at": "10s", "gpu": 0, "mig": 0, "kind": "memory_used", "used_bytes": 4294967296}]}
//
// Fault kinds: xid, ecc_double_bit, lost, restore, memory_used. UUIDs left
// out are derived from the GPU's position and name, the same on every run.
type SimSpec struct {
	DriverVersion     string     `json:"driver_version,omitempty"`
	CUDADriverVersion string     `json:"cuda_driver_version,omitempty"`
	NVMLVersion       string     `json:"nvml_version,omitempty"`
	GPUs              []SimGPU   `json:"gpus"`
	Faults            []SimFault `json:"faults,omitempty"`
}

// SimGPU is one simulated GPU.
type SimGPU struct {
	// UUID is optional; when empty a stable one is derived from the GPU's
	// position and name.
	UUID              string         `json:"uuid,omitempty"`
	Name              string         `json:"name"`
	PCIBusID          string         `json:"pci_bus_id,omitempty"`
	ComputeCapability string         `json:"compute_capability,omitempty"`
	Memory            SimMemory      `json:"memory"`
	Utilization       SimUtilization `json:"utilization,omitempty"`
	TemperatureC      uint32         `json:"temperature_c,omitempty"`
	PowerW            float64        `json:"power_w,omitempty"`
	ECC               SimECC         `json:"ecc,omitempty"`
	// MIG lists MIG instances; a non-empty list turns MIG mode on.
	MIG []SimMIG `json:"mig,omitempty"`
}

// SimMemory is memory in bytes, with the field names of NVIDIA's mocknvml.
// Free is total - reserved - used.
type SimMemory struct {
	TotalBytes    uint64 `json:"total_bytes"`
	UsedBytes     uint64 `json:"used_bytes,omitempty"`
	ReservedBytes uint64 `json:"reserved_bytes,omitempty"`
}

// SimUtilization is utilisation in percent.
type SimUtilization struct {
	GPUPercent    uint32 `json:"gpu_percent,omitempty"`
	MemoryPercent uint32 `json:"memory_percent,omitempty"`
}

// SimECC holds volatile ECC error counts.
type SimECC struct {
	Corrected   uint64 `json:"corrected,omitempty"`
	Uncorrected uint64 `json:"uncorrected,omitempty"`
}

// SimMIG is one MIG instance of a simulated GPU.
type SimMIG struct {
	UUID              string    `json:"uuid,omitempty"`
	Profile           string    `json:"profile"`
	GPUInstanceID     uint32    `json:"gpu_instance_id"`
	ComputeInstanceID uint32    `json:"compute_instance_id"`
	Memory            SimMemory `json:"memory"`
}

// Fault kinds a SimFault can inject.
const (
	FaultXid          = "xid"            // a critical Xid event (field xid)
	FaultDoubleBitECC = "ecc_double_bit" // an uncorrectable ECC event
	FaultLost         = "lost"           // the GPU falls off the bus
	FaultRestore      = "restore"        // a lost GPU answers again
	FaultMemoryUsed   = "memory_used"    // used memory changes (field used_bytes)
)

// SimFault is one scripted event: at time At after the simulator starts,
// something happens to the device named by GPU (an index) and optionally
// MIG (an instance index under it), or by UUID.
type SimFault struct {
	At        string  `json:"at"`
	Kind      string  `json:"kind"`
	GPU       *int    `json:"gpu,omitempty"`
	MIG       *int    `json:"mig,omitempty"`
	UUID      string  `json:"uuid,omitempty"`
	Xid       uint64  `json:"xid,omitempty"`
	UsedBytes *uint64 `json:"used_bytes,omitempty"`
}

// SpecError is a problem in a simulation file, naming the field at fault.
type SpecError struct {
	Field string // e.g. "gpus[2].memory.used_bytes"
	Msg   string
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Msg }

// ParseSimSpec decodes and validates a simulation file. Unknown fields are
// errors, so a typo is caught rather than silently ignored.
func ParseSimSpec(data []byte) (SimSpec, error) {
	var spec SimSpec
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
			return SimSpec{}, fmt.Errorf("simulation file: invalid JSON: it ends early, at byte %d", len(data))
		case errors.As(err, &syn):
			return SimSpec{}, fmt.Errorf("simulation file: invalid JSON at byte %d: %w", syn.Offset, err)
		case errors.As(err, &typ):
			return SimSpec{}, &SpecError{Field: typ.Field, Msg: fmt.Sprintf("want %s, got JSON %s (byte %d)", typ.Type, typ.Value, typ.Offset)}
		}
		return SimSpec{}, fmt.Errorf("simulation file: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return SimSpec{}, errors.New("simulation file: unexpected data after the JSON object")
	}
	if err := spec.normalize(); err != nil {
		return SimSpec{}, err
	}
	return spec, nil
}

// simNamespace seeds the UUIDs derived for GPUs and MIG instances a file
// leaves without one, so they are the same on every run.
var simNamespace = uuid.MustParse("6b61736d-696e-4100-8000-73696d756c61")

// normalize validates the spec and fills defaults (UUIDs, bus ids).
func (s *SimSpec) normalize() error {
	if len(s.GPUs) == 0 {
		return &SpecError{Field: "gpus", Msg: "at least one GPU is required"}
	}
	seen := map[string]string{}
	claim := func(id, field string) error {
		if prev, ok := seen[strings.ToUpper(id)]; ok {
			return &SpecError{Field: field, Msg: fmt.Sprintf("UUID %q is already used by %s", id, prev)}
		}
		seen[strings.ToUpper(id)] = field
		return nil
	}
	for i := range s.GPUs {
		g := &s.GPUs[i]
		f := fmt.Sprintf("gpus[%d]", i)
		if strings.TrimSpace(g.Name) == "" {
			return &SpecError{Field: f + ".name", Msg: "required"}
		}
		if g.UUID == "" {
			g.UUID = "GPU-" + uuid.NewSHA1(simNamespace, fmt.Appendf(nil, "gpu/%d/%s", i, g.Name)).String()
		} else if !strings.HasPrefix(g.UUID, "GPU-") {
			return &SpecError{Field: f + ".uuid", Msg: fmt.Sprintf("%q must start with GPU-", g.UUID)}
		}
		if err := claim(g.UUID, f+".uuid"); err != nil {
			return err
		}
		if g.PCIBusID == "" {
			g.PCIBusID = fmt.Sprintf("00000000:%02X:00.0", i+1)
		}
		if g.ComputeCapability != "" {
			var major, minor int
			if n, err := fmt.Sscanf(g.ComputeCapability, "%d.%d", &major, &minor); n != 2 || err != nil {
				return &SpecError{Field: f + ".compute_capability", Msg: fmt.Sprintf("%q is not major.minor", g.ComputeCapability)}
			}
		}
		if err := g.Memory.check(f + ".memory"); err != nil {
			return err
		}
		if g.Utilization.GPUPercent > 100 || g.Utilization.MemoryPercent > 100 {
			return &SpecError{Field: f + ".utilization", Msg: "percentages must be 0-100"}
		}
		if g.PowerW < 0 {
			return &SpecError{Field: f + ".power_w", Msg: "must not be negative"}
		}
		var migTotal uint64
		ids := map[[2]uint32]bool{}
		for j := range g.MIG {
			m := &g.MIG[j]
			mf := fmt.Sprintf("%s.mig[%d]", f, j)
			if strings.TrimSpace(m.Profile) == "" {
				return &SpecError{Field: mf + ".profile", Msg: "required (e.g. \"1g.5gb\")"}
			}
			if m.UUID == "" {
				m.UUID = "MIG-" + uuid.NewSHA1(simNamespace, fmt.Appendf(nil, "mig/%s/%d", g.UUID, j)).String()
			} else if !strings.HasPrefix(m.UUID, "MIG-") {
				return &SpecError{Field: mf + ".uuid", Msg: fmt.Sprintf("%q must start with MIG-", m.UUID)}
			}
			if err := claim(m.UUID, mf+".uuid"); err != nil {
				return err
			}
			key := [2]uint32{m.GPUInstanceID, m.ComputeInstanceID}
			if ids[key] {
				return &SpecError{Field: mf, Msg: fmt.Sprintf("gpu_instance_id %d / compute_instance_id %d repeats an earlier instance", key[0], key[1])}
			}
			ids[key] = true
			if err := m.Memory.check(mf + ".memory"); err != nil {
				return err
			}
			migTotal += m.Memory.TotalBytes
		}
		if migTotal > g.Memory.TotalBytes {
			return &SpecError{Field: f + ".mig", Msg: fmt.Sprintf("instances total %d bytes, more than the GPU's %d", migTotal, g.Memory.TotalBytes)}
		}
	}
	for i, flt := range s.Faults {
		f := fmt.Sprintf("faults[%d]", i)
		at, err := time.ParseDuration(flt.At)
		if err != nil || at < 0 {
			return &SpecError{Field: f + ".at", Msg: fmt.Sprintf("%q is not a non-negative duration such as \"30s\"", flt.At)}
		}
		if _, _, err := s.resolveFault(flt); err != nil {
			return &SpecError{Field: f, Msg: err.Error()}
		}
		switch flt.Kind {
		case FaultXid:
			if flt.Xid == 0 {
				return &SpecError{Field: f + ".xid", Msg: "required for kind xid"}
			}
		case FaultMemoryUsed:
			if flt.UsedBytes == nil {
				return &SpecError{Field: f + ".used_bytes", Msg: "required for kind memory_used"}
			}
		case FaultDoubleBitECC, FaultLost, FaultRestore:
		default:
			return &SpecError{Field: f + ".kind", Msg: fmt.Sprintf("%q is not one of xid, ecc_double_bit, lost, restore, memory_used", flt.Kind)}
		}
		if (flt.Kind == FaultLost || flt.Kind == FaultRestore) && flt.MIG != nil {
			return &SpecError{Field: f + ".mig", Msg: "lost and restore apply to a whole GPU"}
		}
	}
	return nil
}

// resolveFault finds the GPU index and MIG index (-1 for the GPU itself) a
// fault targets.
func (s *SimSpec) resolveFault(f SimFault) (gpu, mig int, err error) {
	if f.UUID != "" {
		if f.GPU != nil || f.MIG != nil {
			return 0, 0, errors.New("name the device by uuid or by gpu/mig, not both")
		}
		for i, g := range s.GPUs {
			if strings.EqualFold(g.UUID, f.UUID) {
				return i, -1, nil
			}
			for j, m := range g.MIG {
				if strings.EqualFold(m.UUID, f.UUID) {
					return i, j, nil
				}
			}
		}
		return 0, 0, fmt.Errorf("uuid %q names no simulated device", f.UUID)
	}
	if f.GPU == nil {
		return 0, 0, errors.New("gpu (an index) or uuid is required")
	}
	if *f.GPU < 0 || *f.GPU >= len(s.GPUs) {
		return 0, 0, fmt.Errorf("gpu %d is out of range 0..%d", *f.GPU, len(s.GPUs)-1)
	}
	if f.MIG == nil {
		return *f.GPU, -1, nil
	}
	if *f.MIG < 0 || *f.MIG >= len(s.GPUs[*f.GPU].MIG) {
		return 0, 0, fmt.Errorf("mig %d is out of range for gpu %d, which has %d instances", *f.MIG, *f.GPU, len(s.GPUs[*f.GPU].MIG))
	}
	return *f.GPU, *f.MIG, nil
}

func (m SimMemory) check(field string) error {
	if m.TotalBytes == 0 {
		return &SpecError{Field: field + ".total_bytes", Msg: "required and positive"}
	}
	if m.ReservedBytes > m.TotalBytes || m.UsedBytes > m.TotalBytes-m.ReservedBytes {
		return &SpecError{Field: field + ".used_bytes", Msg: fmt.Sprintf("used %d + reserved %d exceed total %d", m.UsedBytes, m.ReservedBytes, m.TotalBytes)}
	}
	return nil
}

const mib = uint64(1) << 20

// DGXA100Spec is the built-in `--simulate dgxa100` node: eight
// A100-SXM4-40GB GPUs, matching go-nvml's mock/dgxa100 (driver 550.54.15,
// CUDA 12.4, compute capability 8.0, 40960 MiB each) but with stable UUIDs,
// memory in use and the readings that mock lacks. The table is in
// SIMULATE.md.
func DGXA100Spec() SimSpec {
	used := []uint64{1024, 3072, 6144, 10240, 14336, 20480, 26624, 32768} // MiB
	util := []uint32{0, 12, 35, 48, 61, 74, 83, 97}
	memUtil := []uint32{0, 5, 14, 22, 30, 41, 52, 60}
	temp := []uint32{31, 34, 38, 42, 47, 51, 56, 63}
	power := []float64{54.3, 88.1, 142.7, 181.9, 221.4, 260.0, 301.5, 372.8}
	bus := []string{"07", "0F", "47", "4E", "87", "90", "B7", "BD"}
	spec := SimSpec{DriverVersion: "550.54.15", CUDADriverVersion: "12.4", NVMLVersion: "12.550.54.15"}
	for i := range 8 {
		g := SimGPU{
			UUID:              fmt.Sprintf("GPU-a1000000-0000-4000-8000-%012d", i),
			Name:              "NVIDIA A100-SXM4-40GB",
			PCIBusID:          "00000000:" + bus[i] + ":00.0",
			ComputeCapability: "8.0",
			Memory:            SimMemory{TotalBytes: 40960 * mib, UsedBytes: used[i] * mib, ReservedBytes: 512 * mib},
			Utilization:       SimUtilization{GPUPercent: util[i], MemoryPercent: memUtil[i]},
			TemperatureC:      temp[i],
			PowerW:            power[i],
		}
		if i == 5 {
			g.ECC.Corrected = 3
		}
		spec.GPUs = append(spec.GPUs, g)
	}
	return spec
}

// DGXA100MIGSpec is `--simulate dgxa100-mig`: DGXA100Spec with MIG mode on
// GPU 0, split into 3g.20gb, 2g.10gb and two 1g.5gb instances.
func DGXA100MIGSpec() SimSpec {
	spec := DGXA100Spec()
	g := &spec.GPUs[0]
	type inst struct {
		profile       string
		gi            uint32
		totalMiB, use uint64
	}
	insts := []inst{{"3g.20gb", 1, 19968, 4096}, {"2g.10gb", 5, 9984, 2048}, {"1g.5gb", 13, 4864, 512}, {"1g.5gb", 14, 4864, 0}}
	var usedMiB uint64
	for j, in := range insts {
		g.MIG = append(g.MIG, SimMIG{
			UUID:          fmt.Sprintf("MIG-a1000000-0000-4000-8000-%010d%02d", 0, j),
			Profile:       in.profile,
			GPUInstanceID: in.gi,
			Memory:        SimMemory{TotalBytes: in.totalMiB * mib, UsedBytes: in.use * mib},
		})
		usedMiB += in.use
	}
	g.Memory.UsedBytes = usedMiB * mib
	return spec
}
