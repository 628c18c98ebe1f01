package contracts

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// kernelJSON builds a CompiledKernel document with the given shape,
// device list and metric counts, to push the decoder's shared storage
// past its capacity.
func kernelJSON(rank, devices, metrics int) string {
	var shape, devs, prof, stats []string
	for i := 0; i < rank; i++ {
		shape = append(shape, fmt.Sprint(i+2))
	}
	for i := 0; i < devices; i++ {
		devs = append(devs, fmt.Sprintf("%q", fmt.Sprintf("dev%d", i)))
	}
	for i := 0; i < metrics; i++ {
		prof = append(prof, fmt.Sprintf(`"p%d": %d.5`, i, i))
		stats = append(stats, fmt.Sprintf(`"s%d": %d.25`, i, i))
	}
	return `{"kernel_id": "k", "blueprint_id": "b", "binary_ref": "s3://x/y", "metadata": {` +
		`"kernel_id": "k", "blueprint_id": "b", "name": "n", "input_shape": [` + strings.Join(shape, ", ") +
		`], "output_shape": [` + strings.Join(shape, ", ") + `], "parameter_count": 1, "device_requirements": [` +
		strings.Join(devs, ", ") + `], "memory_footprint_mb": 1.0, "performance_profile": {` + strings.Join(prof, ", ") +
		`}, "created_at": "2026-11-24T10:00:00Z", "checksum": "abc"}, "deployment_stats": {` + strings.Join(stats, ", ") +
		`}, "created_at": "2026-11-24T10:00:05Z", "last_used_at": "2026-11-24T12:30:00+02:00"}`
}

func TestDecodedListsAreIndependent(t *testing.T) {
	for _, tc := range []struct{ rank, devices, metrics int }{
		{0, 0, 0}, {1, 1, 1}, {3, 2, 2}, {4, 4, 3}, {5, 5, 4}, {9, 7, 7}, {40, 20, 20},
		{3, 300, 200}, // strings well past the first arena chunk
	} {
		t.Run(fmt.Sprintf("rank%d_devices%d_metrics%d", tc.rank, tc.devices, tc.metrics), func(t *testing.T) {
			c, err := DecodeCompiledKernel([]byte(kernelJSON(tc.rank, tc.devices, tc.metrics)))
			if err != nil {
				t.Fatal(err)
			}
			md := &c.Metadata
			if len(md.InputShape) != tc.rank || len(md.DeviceRequirements) != tc.devices ||
				len(md.PerformanceProfile) != tc.metrics || len(c.DeploymentStats) != tc.metrics {
				t.Fatalf("decoded lengths %d %d %d %d", len(md.InputShape), len(md.DeviceRequirements),
					len(md.PerformanceProfile), len(c.DeploymentStats))
			}
			if md.InputShape == nil || md.DeviceRequirements == nil || md.PerformanceProfile == nil {
				t.Fatal("an empty list decoded as nil")
			}
			for i, dev := range md.DeviceRequirements {
				if want := fmt.Sprintf("dev%d", i); dev != want {
					t.Fatalf("device %d is %q, want %q", i, dev, want)
				}
			}
			for i, m := range c.DeploymentStats {
				if want := fmt.Sprintf("s%d", i); m.Name != want || m.Value != float64(i)+0.25 {
					t.Fatalf("deployment stat %d is %v, want %s: %d.25", i, m, want, i)
				}
			}
			wantOut := slices.Clone(md.OutputShape)
			wantStats := slices.Clone(c.DeploymentStats)
			wantChecksum, wantLast := *md.Checksum, *c.LastUsedAt
			// Appending to or writing through one decoded value must
			// never show through another.
			md.InputShape = append(md.InputShape, 99, 98, 97)
			md.DeviceRequirements = append(md.DeviceRequirements, "x", "y")
			md.PerformanceProfile = append(md.PerformanceProfile, Metric{"z", 1}, Metric{"w", 2})
			if len(md.InputShape) > 0 {
				md.InputShape[0] = -1
			}
			if !slices.Equal(md.OutputShape, wantOut) {
				t.Errorf("output_shape changed to %v, want %v", md.OutputShape, wantOut)
			}
			if !slices.Equal(c.DeploymentStats, wantStats) {
				t.Errorf("deployment_stats changed to %v, want %v", c.DeploymentStats, wantStats)
			}
			if *md.Checksum != wantChecksum || !c.LastUsedAt.Equal(wantLast) {
				t.Errorf("checksum %q / last_used_at %v changed", *md.Checksum, *c.LastUsedAt)
			}
			if got := string(c.AppendJSON(nil)); !strings.Contains(got, `"checksum":"abc"`) {
				t.Errorf("encoding lost the checksum: %s", got)
			}
		})
	}
}

func TestOptionalValuesPastTheSharedStorage(t *testing.T) {
	// More optional strings and timestamps than the decoder keeps
	// together: each must still be its own value.
	for n := 1; n <= 12; n++ {
		ptrs := make([]*string, 0, n)
		d := newDecoder("x", nil)
		for i := 0; i < n; i++ {
			ptrs = append(ptrs, d.newStr(fmt.Sprint("s", i)))
		}
		for i, p := range ptrs {
			if *p != fmt.Sprint("s", i) {
				t.Fatalf("n=%d: string %d is %q", n, i, *p)
			}
		}
		base := Now()
		tps := make([]*time.Time, 0, n)
		for i := 0; i < n; i++ {
			tps = append(tps, d.newTime(base.AddDate(0, 0, i)))
		}
		for i, tp := range tps {
			if want := base.AddDate(0, 0, i); !tp.Equal(want) {
				t.Fatalf("n=%d: timestamp %d is %v, want %v", n, i, tp, want)
			}
		}
	}
}
