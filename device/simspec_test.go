package device

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseSimSpecExampleFile(t *testing.T) {
	data, err := os.ReadFile("testdata/sim-example.json")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ParseSimSpec(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.GPUs) != 3 || len(spec.GPUs[1].MIG) != 2 || len(spec.Faults) != 6 {
		t.Fatalf("parsed %d GPUs, %d MIG, %d faults", len(spec.GPUs), len(spec.GPUs[1].MIG), len(spec.Faults))
	}
	if !strings.HasPrefix(spec.GPUs[0].UUID, "GPU-") || !strings.HasPrefix(spec.GPUs[1].MIG[0].UUID, "MIG-") {
		t.Errorf("derived UUIDs %q %q", spec.GPUs[0].UUID, spec.GPUs[1].MIG[0].UUID)
	}
}

func TestParseSimSpecErrorsNameTheField(t *testing.T) {
	gpu := `{"name":"G","memory":{"total_bytes":100}}`
	cases := []struct {
		name, json, field string
	}{
		{"no GPUs", `{"gpus":[]}`, "gpus"},
		{"unknown field", `{"gpus":[` + gpu + `],"gpuz":1}`, "gpuz"},
		{"wrong type", `{"gpus":[{"name":"G","memory":{"total_bytes":"big"}}]}`, "gpus.memory.total_bytes"},
		{"missing name", `{"gpus":[{"memory":{"total_bytes":100}}]}`, "gpus[0].name"},
		{"zero total", `{"gpus":[{"name":"G","memory":{}}]}`, "gpus[0].memory.total_bytes"},
		{"used beyond total", `{"gpus":[{"name":"G","memory":{"total_bytes":100,"used_bytes":90,"reserved_bytes":20}}]}`, "gpus[0].memory.used_bytes"},
		{"bad uuid prefix", `{"gpus":[{"uuid":"X-1","name":"G","memory":{"total_bytes":100}}]}`, "gpus[0].uuid"},
		{"duplicate uuid", `{"gpus":[{"uuid":"GPU-1","name":"G","memory":{"total_bytes":100}},{"uuid":"GPU-1","name":"G","memory":{"total_bytes":100}}]}`, "gpus[1].uuid"},
		{"bad compute capability", `{"gpus":[{"name":"G","compute_capability":"eight","memory":{"total_bytes":100}}]}`, "gpus[0].compute_capability"},
		{"utilisation over 100", `{"gpus":[{"name":"G","memory":{"total_bytes":100},"utilization":{"gpu_percent":101}}]}`, "gpus[0].utilization"},
		{"MIG larger than GPU", `{"gpus":[{"name":"G","memory":{"total_bytes":100},"mig":[{"profile":"1g","memory":{"total_bytes":80}},{"profile":"1g","gpu_instance_id":2,"memory":{"total_bytes":80}}]}]}`, "gpus[0].mig"},
		{"MIG without profile", `{"gpus":[{"name":"G","memory":{"total_bytes":100},"mig":[{"memory":{"total_bytes":80}}]}]}`, "gpus[0].mig[0].profile"},
		{"fault bad time", `{"gpus":[` + gpu + `],"faults":[{"at":"soon","gpu":0,"kind":"lost"}]}`, "faults[0].at"},
		{"fault negative time", `{"gpus":[` + gpu + `],"faults":[{"at":"-1s","gpu":0,"kind":"lost"}]}`, "faults[0].at"},
		{"fault bad kind", `{"gpus":[` + gpu + `],"faults":[{"at":"1s","gpu":0,"kind":"explode"}]}`, "faults[0].kind"},
		{"fault without target", `{"gpus":[` + gpu + `],"faults":[{"at":"1s","kind":"lost"}]}`, "faults[0]"},
		{"fault gpu out of range", `{"gpus":[` + gpu + `],"faults":[{"at":"1s","gpu":3,"kind":"lost"}]}`, "faults[0]"},
		{"xid fault without xid", `{"gpus":[` + gpu + `],"faults":[{"at":"1s","gpu":0,"kind":"xid"}]}`, "faults[0].xid"},
		{"memory fault without bytes", `{"gpus":[` + gpu + `],"faults":[{"at":"1s","gpu":0,"kind":"memory_used"}]}`, "faults[0].used_bytes"},
		{"lost on a MIG instance", `{"gpus":[{"name":"G","memory":{"total_bytes":100},"mig":[{"profile":"1g","memory":{"total_bytes":10}}]}],"faults":[{"at":"1s","gpu":0,"mig":0,"kind":"lost"}]}`, "faults[0].mig"},
		{"trailing data", `{"gpus":[` + gpu + `]} {}`, "after the JSON"},
		{"syntax error", `{"gpus":[`, "invalid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSimSpec([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v, want it to name %q", err, tc.field)
			}
			var se *SpecError
			if errors.As(err, &se) && !strings.Contains(se.Field, strings.SplitN(tc.field, " ", 2)[0]) {
				t.Errorf("SpecError.Field = %q", se.Field)
			}
		})
	}
}

func FuzzParseSimSpec(f *testing.F) {
	if data, err := os.ReadFile("testdata/sim-example.json"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(`{"gpus":[{"name":"G","memory":{"total_bytes":100,"used_bytes":10}}],"faults":[{"at":"1s","gpu":0,"kind":"xid","xid":79}]}`))
	f.Add([]byte(`{"gpus":[{"name":"G","memory":{"total_bytes":100},"mig":[{"profile":"1g","memory":{"total_bytes":10}}]}]}`))
	f.Add([]byte(`{"gpus":[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ParseSimSpec(data)
		if err != nil {
			return
		}
		// Whatever parses must build a simulator whose readings are consistent.
		sim, err := NewSimulator("fuzz", spec, nil)
		if err != nil {
			t.Fatalf("valid spec rejected by NewSimulator: %v", err)
		}
		_ = sim.Init()
		n, _ := sim.Count()
		for i := range n {
			devs, err := sim.Query(i)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range devs {
				if d.MemoryUsedBytes+d.MemoryFreeBytes+d.MemoryReservedBytes != d.MemoryTotalBytes {
					t.Fatalf("%s: used+free+reserved != total", d.UUID)
				}
			}
		}
	})
}
