package oip

import (
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/admission"
)

// TestOpenBreakerIsTheModelsReadiness: a kernel whose breaker is open is
// an UNAVAILABLE model with the breaker's reason (its own readiness
// answers 503), while the node stays ready.
func TestOpenBreakerIsTheModelsReadiness(t *testing.T) {
	mi := modelInfo(runtime.KernelView{Name: "k", Breaker: admission.Open, BreakerReason: "circuit breaker open after 5 consecutive failures; next probe in 9s", MaxBatch: 8})
	if mi.State != StateUnavailable || !strings.Contains(mi.Reason, "circuit breaker open") || mi.MaxBatch != 8 {
		t.Fatalf("model info %+v", mi)
	}
	if mi := modelInfo(runtime.KernelView{Name: "k", Breaker: admission.Closed}); mi.State != StateReady || mi.Reason != "" {
		t.Fatalf("closed breaker: %+v", mi)
	}
}
