package main

import (
	"flag"
	"fmt"

	"github.com/esper/kasmina-host/runtime/placement"
)

// placementFlags are the placement settings shared by place and serve.
type placementFlags struct {
	policy           string
	fallback         string
	headroomMiB      float64
	headroomFraction float64
	cpuHeadroomMiB   float64
	batch            int
}

func (p *placementFlags) register(fs *flag.FlagSet, e *envFlags) {
	e.String(&p.policy, "placement-policy", "KASMINA_PLACEMENT_POLICY", "best-fit",
		"best-fit (pack kernels tightly, keep big holes free) or spread (balance kernels across GPUs)")
	e.String(&p.fallback, "cpu-fallback", "KASMINA_CPU_FALLBACK", "degraded",
		"when no GPU qualifies for a kernel that lists only GPUs: allow (run on the CPU), degraded (run on the CPU, marked degraded) or deny (refuse)")
	e.Float(&p.headroomMiB, "headroom-mib", "KASMINA_HEADROOM_MIB", 512, "MiB kept free on every GPU on top of a kernel's estimate")
	e.Float(&p.headroomFraction, "headroom-fraction", "KASMINA_HEADROOM_FRACTION", 0, "fraction of each GPU's total memory kept free as well")
	e.Float(&p.cpuHeadroomMiB, "cpu-headroom-mib", "KASMINA_CPU_HEADROOM_MIB", 256, "MiB of host memory kept free on the CPU")
	e.Int(&p.batch, "placement-batch", "KASMINA_PLACEMENT_BATCH", 32, "batch size memory estimates are made for when loading")
}

func (p *placementFlags) parse() (placement.Options, placement.Fallback, error) {
	pol, err := placement.ParsePolicy(p.policy)
	if err != nil {
		return placement.Options{}, 0, fmt.Errorf("--placement-policy: %w", err)
	}
	fb, err := placement.ParseFallback(p.fallback)
	if err != nil {
		return placement.Options{}, 0, fmt.Errorf("--cpu-fallback: %w", err)
	}
	if p.headroomMiB < 0 || p.headroomFraction < 0 || p.headroomFraction >= 1 || p.cpuHeadroomMiB < 0 {
		return placement.Options{}, 0, fmt.Errorf("--headroom-mib, --cpu-headroom-mib must be ≥ 0 and --headroom-fraction in [0, 1)")
	}
	if p.batch < 1 {
		return placement.Options{}, 0, fmt.Errorf("--placement-batch must be ≥ 1, got %d", p.batch)
	}
	return placement.Options{Policy: pol, HeadroomMiB: p.headroomMiB, HeadroomFraction: p.headroomFraction,
		CPUHeadroomMiB: p.cpuHeadroomMiB}, fb, nil
}
