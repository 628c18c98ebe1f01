package device

import (
	"slices"
	"strings"
	"testing"
)

func TestApplyVisibilityEveryForm(t *testing.T) {
	all := []string{"0", "1", "2", "3", "4", "5", "6", "7"}
	cases := []struct {
		name     string
		vars     map[string]string
		want     []string // labels in CUDA ordinal order
		warnings int
	}{
		{"unset means all", nil, all, 0},
		{"empty means none", map[string]string{EnvCUDAVisibleDevices: ""}, []string{}, 0},
		{"blank means none", map[string]string{EnvCUDAVisibleDevices: "  "}, []string{}, 0},
		{"minus one means none", map[string]string{EnvCUDAVisibleDevices: "-1"}, []string{}, 1},
		{"indices keep list order", map[string]string{EnvCUDAVisibleDevices: "3,1"}, []string{"3", "1"}, 0},
		{"spaces around entries", map[string]string{EnvCUDAVisibleDevices: " 2 , 5 "}, []string{"2", "5"}, 0},
		{"stop at first invalid entry", map[string]string{EnvCUDAVisibleDevices: "0,2,-1,1"}, []string{"0", "2"}, 1},
		{"index out of range stops", map[string]string{EnvCUDAVisibleDevices: "6,8,1"}, []string{"6"}, 1},
		{"garbage stops", map[string]string{EnvCUDAVisibleDevices: "1,foo,2"}, []string{"1"}, 1},
		{"empty entry stops", map[string]string{EnvCUDAVisibleDevices: "0,,1"}, []string{"0"}, 1},
		{"repeat stops", map[string]string{EnvCUDAVisibleDevices: "1,1,2"}, []string{"1"}, 1},
		{"full GPU UUID", map[string]string{EnvCUDAVisibleDevices: gpuUUID(4)}, []string{"4"}, 0},
		{"UUIDs and indices mixed", map[string]string{EnvCUDAVisibleDevices: gpuUUID(7) + ",0"}, []string{"7", "0"}, 0},
		{"unique UUID prefix", map[string]string{EnvCUDAVisibleDevices: gpuUUID(6)[:len(gpuUUID(6))-1] + "6"}, []string{"6"}, 0},
		{"ambiguous prefix stops", map[string]string{EnvCUDAVisibleDevices: "GPU-a1000000"}, []string{}, 1},
		{"unknown UUID stops", map[string]string{EnvCUDAVisibleDevices: "2,GPU-deadbeef,3"}, []string{"2"}, 1},
		{"NVIDIA all", map[string]string{EnvNVIDIAVisibleDevices: "all"}, all, 0},
		{"NVIDIA void behaves like unset", map[string]string{EnvNVIDIAVisibleDevices: "void"}, all, 0},
		{"NVIDIA empty behaves like unset", map[string]string{EnvNVIDIAVisibleDevices: ""}, all, 0},
		{"NVIDIA none hides every GPU", map[string]string{EnvNVIDIAVisibleDevices: "none"}, []string{}, 0},
		{"NVIDIA none wins over CUDA", map[string]string{EnvNVIDIAVisibleDevices: "none", EnvCUDAVisibleDevices: "0"}, []string{}, 1},
		{"NVIDIA index list as long as the GPUs is already applied", map[string]string{EnvNVIDIAVisibleDevices: "7,6,5,4,3,2,1,0"}, all, 0},
		{"NVIDIA index list filters on the host", map[string]string{EnvNVIDIAVisibleDevices: "1,3"}, []string{"1", "3"}, 0},
		{"NVIDIA UUID list filters", map[string]string{EnvNVIDIAVisibleDevices: gpuUUID(5) + "," + gpuUUID(2)}, []string{"2", "5"}, 0},
		{"NVIDIA unknown UUID warns", map[string]string{EnvNVIDIAVisibleDevices: gpuUUID(1) + ",GPU-nope"}, []string{"1"}, 1},
		{"CUDA indices count the NVIDIA-visible GPUs", map[string]string{EnvNVIDIAVisibleDevices: "2,5", EnvCUDAVisibleDevices: "1"}, []string{"5"}, 0},
		{"CUDA UUID hidden by NVIDIA stops", map[string]string{EnvNVIDIAVisibleDevices: "2,5", EnvCUDAVisibleDevices: gpuUUID(3)}, []string{}, 1},
	}
	for _, tc := range cases {
		if tc.want == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			devs := simDevices(t, DGXA100Spec())
			warnings := ApplyVisibility(devs, env(tc.vars))
			if got := byOrdinal(devs); !slices.Equal(got, tc.want) {
				t.Errorf("CUDA order = %v, want %v", got, tc.want)
			}
			if len(warnings) != tc.warnings {
				t.Errorf("warnings = %q, want %d", warnings, tc.warnings)
			}
			wantVisible := append(slices.Sorted(slices.Values(tc.want)), "cpu")
			if got := visibleLabels(devs); !slices.Equal(got, wantVisible) {
				t.Errorf("visible = %v, want %v (CPU always visible)", got, wantVisible)
			}
		})
	}
}

func TestApplyVisibilityShortUniquePrefix(t *testing.T) {
	spec := SimSpec{GPUs: []SimGPU{
		{UUID: "GPU-1111aaaa-0000-4000-8000-000000000000", Name: "A", Memory: SimMemory{TotalBytes: 1 << 30}},
		{UUID: "GPU-2222bbbb-0000-4000-8000-000000000000", Name: "B", Memory: SimMemory{TotalBytes: 1 << 30}},
	}}
	devs := simDevices(t, spec)
	if w := ApplyVisibility(devs, env(map[string]string{EnvCUDAVisibleDevices: "GPU-2222"})); len(w) != 0 {
		t.Fatalf("warnings: %v", w)
	}
	if got := byOrdinal(devs); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("GPU-2222 selected %v, want [1]", got)
	}
}

func TestApplyVisibilityMIG(t *testing.T) {
	cases := []struct {
		name        string
		vars        map[string]string
		wantOrder   []string
		wantVisible []string
	}{
		{"unset: instances instead of their GPU", nil,
			[]string{"0:0", "0:1", "0:2", "0:3", "1", "2", "3", "4", "5", "6", "7"},
			[]string{"0", "0:0", "0:1", "0:2", "0:3", "1", "2", "3", "4", "5", "6", "7", "cpu"}},
		{"MIG UUID", map[string]string{EnvCUDAVisibleDevices: migUUID(1)}, []string{"0:1"}, []string{"0", "0:1", "cpu"}},
		{"MIG UUIDs in list order", map[string]string{EnvCUDAVisibleDevices: migUUID(3) + "," + migUUID(0)}, []string{"0:3", "0:0"}, []string{"0", "0:0", "0:3", "cpu"}},
		{"legacy MIG-GPU form", map[string]string{EnvCUDAVisibleDevices: "MIG-" + gpuUUID(0) + "/5/0"}, []string{"0:1"}, []string{"0", "0:1", "cpu"}},
		{"legacy form with bad ids stops", map[string]string{EnvCUDAVisibleDevices: "MIG-" + gpuUUID(0) + "/x/0"}, []string{}, []string{"cpu"}},
		{"index of a MIG GPU selects its instances", map[string]string{EnvCUDAVisibleDevices: "0,1"}, []string{"0:0", "0:1", "0:2", "0:3", "1"}, []string{"0", "0:0", "0:1", "0:2", "0:3", "1", "cpu"}},
		{"NVIDIA MIG UUID", map[string]string{EnvNVIDIAVisibleDevices: migUUID(2)}, []string{"0:2"}, []string{"0", "0:2", "cpu"}},
		{"unknown MIG UUID stops", map[string]string{EnvCUDAVisibleDevices: "MIG-00000000"}, []string{}, []string{"cpu"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			devs := simDevices(t, DGXA100MIGSpec())
			ApplyVisibility(devs, env(tc.vars))
			if got := byOrdinal(devs); !slices.Equal(got, tc.wantOrder) {
				t.Errorf("CUDA order = %v, want %v", got, tc.wantOrder)
			}
			if got := visibleLabels(devs); !slices.Equal(got, tc.wantVisible) {
				t.Errorf("visible = %v, want %v", got, tc.wantVisible)
			}
		})
	}
}

func TestApplyVisibilityWarningNamesTheEntry(t *testing.T) {
	devs := simDevices(t, DGXA100Spec())
	w := ApplyVisibility(devs, env(map[string]string{EnvCUDAVisibleDevices: "0,2,-1,1"}))
	if len(w) != 1 || !strings.Contains(w[0], `"-1"`) || !strings.Contains(w[0], "entry 2") {
		t.Fatalf("warning %q should name entry 2 and its value", w)
	}
}
