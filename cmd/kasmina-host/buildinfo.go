package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// registerBuildInfo registers kasmina_build_info: a constant 1 labelled
// with what was built and whether NVML is in use.
func registerBuildInfo(reg prometheus.Registerer, bi buildInfo, deviceSource string) {
	nvml := "false"
	if deviceSource == "nvml" {
		nvml = "true"
	}
	cgo := "false"
	if bi.CGO {
		cgo = "true"
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kasmina_build_info",
		Help: "Build information: version, commit, Go version, build tags, cgo and whether NVML is in use.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "commit": bi.Commit, "goversion": bi.GoVersion,
			"tags": bi.Tags, "cgo": cgo, "nvml": nvml, "device_source": deviceSource},
	}, func() float64 { return 1 }))
}
