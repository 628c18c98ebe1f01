package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type jsonDevice struct {
	Kind             string  `json:"kind"`
	Index            *int    `json:"index"`
	UUID             string  `json:"uuid"`
	Name             string  `json:"name"`
	MemoryTotalBytes *uint64 `json:"memory_total_bytes"`
	MemoryFreeBytes  *uint64 `json:"memory_free_bytes"`
	MemoryUsedBytes  *uint64 `json:"memory_used_bytes"`
	Healthy          *bool   `json:"healthy"`
}

func runDevicesForTest(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := dispatch(context.Background(), append([]string{"devices"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDevicesJSONSimulatedDGXA100(t *testing.T) {
	cases := []struct {
		name     string
		cuda     *string
		wantGPUs []string
	}{
		{"all eight", nil, []string{"0", "1", "2", "3", "4", "5", "6", "7"}},
		{"CUDA_VISIBLE_DEVICES filters", ptr("5,2"), []string{"2", "5"}},
		{"empty CUDA_VISIBLE_DEVICES hides every GPU", ptr(""), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NVIDIA_VISIBLE_DEVICES", "all")
			if tc.cuda != nil {
				t.Setenv("CUDA_VISIBLE_DEVICES", *tc.cuda)
			} else {
				t.Setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
			}
			code, out, stderr := runDevicesForTest(t, "--json", "--simulate", "dgxa100")
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var devs []jsonDevice
			if err := json.Unmarshal([]byte(out), &devs); err != nil {
				t.Fatalf("not a JSON array: %v\n%s", err, out)
			}
			var gpus []string
			for i, d := range devs {
				if d.Index == nil || d.UUID == "" || d.Name == "" || d.MemoryTotalBytes == nil || d.MemoryFreeBytes == nil || d.MemoryUsedBytes == nil || d.Healthy == nil {
					t.Fatalf("device %d lacks a required field: %+v", i, d)
				}
				if d.Kind == "gpu" {
					gpus = append(gpus, strconv.Itoa(*d.Index))
					if *d.MemoryTotalBytes != 42949672960 || *d.MemoryFreeBytes < 5<<30 || !*d.Healthy {
						t.Errorf("GPU %d: total %d free %d healthy %v", *d.Index, *d.MemoryTotalBytes, *d.MemoryFreeBytes, *d.Healthy)
					}
				}
			}
			if strings.Join(gpus, ",") != strings.Join(tc.wantGPUs, ",") {
				t.Errorf("GPUs %v, want %v", gpus, tc.wantGPUs)
			}
			if last := devs[len(devs)-1]; last.Kind != "cpu" {
				t.Errorf("last device is %q, want the CPU", last.Kind)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestDevicesTable(t *testing.T) {
	t.Setenv("CUDA_VISIBLE_DEVICES", "0,2,-1,1")
	code, out, _ := runDevicesForTest(t, "--simulate", "dgxa100-mig")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"simulated:dgxa100-mig", "Driver: 550.54.15", "IDX", "MIG-a1000000", "0:3", "GPU-a1000000-0000-4000-8000-000000000002", "cpu", "warning: CUDA_VISIBLE_DEVICES"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "GPU-a1000000-0000-4000-8000-000000000001") {
		t.Errorf("GPU 1 comes after the invalid -1 and must be hidden:\n%s", out)
	}
}

func TestDevicesExitCodes(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"unknown flag", []string{"--bogus"}, exitUsage},
		{"stray argument", []string{"extra"}, exitUsage},
		{"help", []string{"-h"}, exitOK},
		{"missing simulation file", []string{"--simulate", "/nonexistent/node.json"}, exitFatal},
		{"simulation file", []string{"--simulate", "NODE", "--json"}, exitOK},
		{"invalid simulation file", []string{"--simulate", "BAD"}, exitFatal},
	}
	dir := t.TempDir()
	node := filepath.Join(dir, "node.json")
	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(node, []byte(`{"gpus":[{"name":"NVIDIA H100 80GB HBM3","memory":{"total_bytes":85520809984,"used_bytes":1073741824}}]}`), 0o600)
	_ = os.WriteFile(bad, []byte(`{"gpus":[{"name":"X","memory":{"total_bytes":0}}]}`), 0o600)
	for _, tc := range cases {
		for i, a := range tc.args {
			switch a {
			case "NODE":
				tc.args[i] = node
			case "BAD":
				tc.args[i] = bad
			}
		}
		t.Run(tc.name, func(t *testing.T) {
			if code, _, stderr := runDevicesForTest(t, tc.args...); code != tc.want {
				t.Fatalf("exit %d, want %d (%s)", code, tc.want, stderr)
			}
		})
	}
}

func TestDevicesBadRequireGPUEnvIsUsageError(t *testing.T) {
	t.Setenv("KASMINA_REQUIRE_GPU", "maybe")
	if code, _, stderr := runDevicesForTest(t, "--simulate", "dgxa100"); code != exitUsage || !strings.Contains(stderr, "KASMINA_REQUIRE_GPU") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}
