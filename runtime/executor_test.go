package runtime

import (
	"testing"

	"github.com/esper/kasmina-host/runtime/placement"
)

// Every placement routes to an executor in one place: the CPU's runs CPU
// placements as placed, and GPU placements with the reason it is not
// theirs; a fallback says why it fell back.
func TestExecutorFor(t *testing.T) {
	for _, c := range []struct {
		name     string
		dec      placement.Decision
		why      string
		degraded string
	}{
		{"cpu", placement.Decision{Device: "cpu", Kind: placement.KindCPU}, "", ""},
		{"gpu", placement.Decision{Device: "cuda:3", Kind: placement.KindGPU}, noGPUBackend,
			"placed on cuda:3, executed on cpu because no GPU backend is built in"},
		{"mig", placement.Decision{Device: "cuda:0", Kind: placement.KindMIG}, noGPUBackend,
			"placed on cuda:0, executed on cpu because no GPU backend is built in"},
		{"fallback", placement.Decision{Device: "cpu", Kind: placement.KindCPU, Fallback: true, Degraded: true, Shortfall: placement.NoGPUVisible},
			"", "fell back to the CPU: no GPU is visible"},
		{"allowed fallback", placement.Decision{Device: "cpu", Kind: placement.KindCPU, Fallback: true, Shortfall: placement.NoGPUVisible},
			"", ""},
	} {
		ex, why := executorFor(&c.dec)
		if ex.Name() != "cpu-f32" || ex.Device() != "cpu" || why != c.why {
			t.Errorf("%s: executor %s on %s, why %q; want cpu-f32 on cpu, %q", c.name, ex.Name(), ex.Device(), why, c.why)
		}
		r := routeFor(&c.dec)
		if r.exec != ex || r.placedOn != c.dec.Device || r.degraded != c.degraded {
			t.Errorf("%s: route %+v, want placed on %s, degraded %q", c.name, r, c.dec.Device, c.degraded)
		}
	}
}
