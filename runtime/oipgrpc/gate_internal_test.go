package oipgrpc

import (
	"testing"

	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// TestEveryServedMethodHasAnAccessClass: a method added to a service
// without a line in accessOf would be guarded as a write, which is safe
// but probably not meant; this says so.
func TestEveryServedMethodHasAnAccessClass(t *testing.T) {
	s := New(oiptest.New(), Options{}, nil)
	if len(s.gate.served) != len(accessOf) {
		t.Errorf("%d methods served, %d with an access class", len(s.gate.served), len(accessOf))
	}
	for m := range s.gate.served {
		if _, ok := accessOf[m]; !ok {
			t.Errorf("%s has no access class", m)
		}
	}
}
