package device

import (
	"fmt"
	"strconv"
	"strings"
)

// Environment variables that decide which devices the process may use.
const (
	EnvCUDAVisibleDevices   = "CUDA_VISIBLE_DEVICES"
	EnvNVIDIAVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
)

// ApplyVisibility sets Visible and CUDAOrdinal on every device in devs (which
// is in snapshot order: index order, MIG instances after their GPU, the CPU
// last) from the environment that lookup reads (os.LookupEnv's signature:
// CUDA_VISIBLE_DEVICES distinguishes unset from empty). It returns
// human-readable warnings for entries it had to skip.
//
// NVIDIA_VISIBLE_DEVICES is applied first:
//   - unset, empty or "void": no filter (runc's behaviour: whatever NVML sees);
//   - "all": every device; "none": no GPU at all;
//   - a list of indices, GPU- or MIG- UUIDs. The list names host devices,
//     while inside a container NVML numbers the injected GPUs from 0, so an
//     index-only list as long as the number of GPUs NVML sees is taken as
//     already applied by the container runtime; UUIDs always filter.
//
// CUDA_VISIBLE_DEVICES then picks from what is left, as the CUDA runtime does:
//   - unset: everything; empty: nothing;
//   - a comma list of indices (positions among the GPUs left above), GPU-
//     UUIDs or unique GPU- UUID prefixes, MIG- UUIDs, or the older
//     MIG-GPU-<uuid>/<gi>/<ci> form;
//   - enumeration follows the list's order, and the first entry that names no
//     device (an index out of range such as -1, an unknown or ambiguous
//     UUID, a repeat) ends the list: "0,2,-1,1" means 0 and 2.
//
// An index or GPU UUID naming a GPU whose MIG mode is enabled selects its MIG
// instances. The CPU is always visible.
func ApplyVisibility(devs []Device, lookup func(string) (string, bool)) []string {
	var warnings []string
	allowed := make([]bool, len(devs))
	nv, nvSet := lookup(EnvNVIDIAVisibleDevices)
	warnings = append(warnings, applyNVIDIAVisible(devs, allowed, strings.TrimSpace(nv), nvSet)...)

	for i := range devs {
		devs[i].Visible = false
		devs[i].CUDAOrdinal = -1
	}
	cv, cvSet := lookup(EnvCUDAVisibleDevices)
	var order []int // positions in devs, in CUDA's enumeration order
	if !cvSet {
		for i, d := range devs {
			if allowed[i] && runsWork(d) {
				order = append(order, i)
			}
		}
	} else {
		var w []string
		order, w = parseCUDAVisible(devs, allowed, cv)
		warnings = append(warnings, w...)
	}
	for ordinal, i := range order {
		devs[i].Visible = true
		devs[i].CUDAOrdinal = ordinal
	}
	for i := range devs {
		d := &devs[i]
		// The CPU is always visible, and so is a MIG-enabled GPU with a
		// visible instance (its temperature and health matter), though it
		// has no CUDA ordinal of its own.
		if d.Kind == KindCPU {
			d.Visible = true
		}
		if d.Kind == KindMIG && d.Visible && d.MIG != nil {
			for j := range devs {
				if devs[j].Kind == KindGPU && devs[j].UUID == d.MIG.ParentUUID {
					devs[j].Visible = true
				}
			}
		}
	}
	return warnings
}

func runsWork(d Device) bool { return d.RunsWork() }

// expand returns the positions a GPU stands for: its MIG instances when MIG
// is enabled, else itself.
func expand(devs []Device, allowed []bool, gpu int) []int {
	if !devs[gpu].MIGEnabled {
		return []int{gpu}
	}
	var out []int
	for i, d := range devs {
		if d.Kind == KindMIG && d.MIG != nil && d.MIG.ParentUUID == devs[gpu].UUID && allowed[i] {
			out = append(out, i)
		}
	}
	return out
}

func applyNVIDIAVisible(devs []Device, allowed []bool, v string, set bool) []string {
	lower := strings.ToLower(v)
	switch {
	case !set || lower == "" || lower == "void" || lower == "all":
		for i, d := range devs {
			allowed[i] = d.IsAccelerator()
		}
		return nil
	case lower == "none":
		return nil
	}
	entries := splitList(v)
	gpuCount := 0
	for _, d := range devs {
		if d.Kind == KindGPU {
			gpuCount++
		}
	}
	allIndices := true
	for _, e := range entries {
		if _, err := strconv.Atoi(e); err != nil {
			allIndices = false
		}
	}
	if allIndices && len(entries) == gpuCount {
		for i, d := range devs {
			allowed[i] = d.IsAccelerator()
		}
		return nil
	}
	var warnings []string
	for _, e := range entries {
		matched := false
		for i, d := range devs {
			if !d.IsAccelerator() {
				continue
			}
			hit := false
			if n, err := strconv.Atoi(e); err == nil {
				hit = d.Index == n
			} else {
				hit = strings.EqualFold(d.UUID, e) || (d.MIG != nil && strings.EqualFold(d.MIG.ParentUUID, e))
			}
			if hit {
				allowed[i] = true
				matched = true
			}
		}
		if !matched {
			warnings = append(warnings, fmt.Sprintf("%s: no device matches %q (the list names host devices; inside a container NVML numbers GPUs from 0, so prefer UUIDs)", EnvNVIDIAVisibleDevices, e))
		}
	}
	return warnings
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseCUDAVisible(devs []Device, allowed []bool, v string) ([]int, []string) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	// GPUs left after NVIDIA_VISIBLE_DEVICES, in index order: what CUDA
	// indices count.
	var gpus []int
	for i, d := range devs {
		if d.Kind == KindGPU && (allowed[i] || len(expand(devs, allowed, i)) > 0 && d.MIGEnabled) {
			gpus = append(gpus, i)
		}
	}
	var order []int
	seen := map[int]bool{}
	for n, raw := range strings.Split(v, ",") {
		e := strings.TrimSpace(raw)
		picked, why := resolveCUDAEntry(devs, allowed, gpus, e)
		for _, p := range picked {
			if seen[p] {
				picked, why = nil, "it repeats an earlier entry"
				break
			}
		}
		if len(picked) == 0 {
			return order, []string{fmt.Sprintf("%s: entry %d (%q) names no usable device (%s); like CUDA, ignoring it and every entry after it", EnvCUDAVisibleDevices, n, e, why)}
		}
		for _, p := range picked {
			seen[p] = true
			order = append(order, p)
		}
	}
	return order, nil
}

func resolveCUDAEntry(devs []Device, allowed []bool, gpus []int, e string) ([]int, string) {
	if e == "" {
		return nil, "empty entry"
	}
	if n, err := strconv.Atoi(e); err == nil {
		if n < 0 || n >= len(gpus) {
			return nil, fmt.Sprintf("index out of range 0..%d", len(gpus)-1)
		}
		return expand(devs, allowed, gpus[n]), "its MIG mode is on but no instance is allowed"
	}
	upper := strings.ToUpper(e)
	switch {
	case strings.HasPrefix(upper, "MIG-GPU-"):
		// Legacy form MIG-GPU-<uuid>/<gi>/<ci>.
		parts := strings.Split(e[len("MIG-"):], "/")
		if len(parts) != 3 {
			return nil, "want MIG-GPU-<uuid>/<gi>/<ci>"
		}
		gi, err1 := strconv.ParseUint(parts[1], 10, 32)
		ci, err2 := strconv.ParseUint(parts[2], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, "GPU and compute instance ids must be numbers"
		}
		for i, d := range devs {
			if d.Kind == KindMIG && allowed[i] && d.MIG != nil && strings.EqualFold(d.MIG.ParentUUID, parts[0]) &&
				uint64(d.MIG.GPUInstanceID) == gi && uint64(d.MIG.ComputeInstanceID) == ci {
				return []int{i}, ""
			}
		}
		return nil, "no such MIG instance"
	case strings.HasPrefix(upper, "MIG-"), strings.HasPrefix(upper, "GPU-"):
		kind := KindGPU
		if strings.HasPrefix(upper, "MIG-") {
			kind = KindMIG
		}
		match := -1
		for i, d := range devs {
			if d.Kind != kind || !strings.HasPrefix(strings.ToUpper(d.UUID), upper) {
				continue
			}
			if kind == KindMIG && !allowed[i] {
				continue
			}
			if kind == KindGPU && !allowed[i] && !d.MIGEnabled {
				continue
			}
			if match >= 0 {
				return nil, "the UUID prefix is ambiguous"
			}
			match = i
		}
		if match < 0 {
			return nil, "no such UUID"
		}
		if kind == KindGPU {
			return expand(devs, allowed, match), "its MIG mode is on but no instance is allowed"
		}
		return []int{match}, ""
	}
	return nil, "not an index, GPU- or MIG- UUID"
}
