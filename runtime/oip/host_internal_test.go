package oip

import (
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/admission"
)

// TestOpenBreakerIsTheModelsReadiness: a kernel whose breaker is open is
// an UNAVAILABLE model with the breaker's reason (its own readiness
// answers 503), while the node stays ready.
func TestOpenBreakerIsTheModelsReadiness(t *testing.T) {
	for _, c := range []struct {
		breaker       admission.BreakerState
		why           string
		state, reason string
	}{
		{admission.Open, "circuit breaker open after 5 consecutive failures; next probe in 9s", StateUnavailable, "circuit breaker open after 5 consecutive failures; next probe in 9s"},
		{admission.HalfOpen, "circuit breaker half-open after 5 consecutive failures: the next request probes the kernel", StateUnavailable, "circuit breaker half-open after 5 consecutive failures: the next request probes the kernel"},
		{admission.Closed, "", StateReady, ""},
	} {
		if state, reason := modelState(c.breaker, c.why); state != c.state || reason != c.reason || !strings.Contains(reason, "circuit breaker") != (c.breaker == admission.Closed) {
			t.Errorf("breaker %s: %s %q, want %s %q", c.breaker, state, reason, c.state, c.reason)
		}
	}
}
