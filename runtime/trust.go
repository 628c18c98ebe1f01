package runtime

import (
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"maps"
	"sync"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// What the host trusts of Urza (a kernel id resolved through a Resolver):
//
//   - its status: validated and deployed kernels load; a kernel still
//     testing is refused for now (class Unavailable: a bus command is
//     retried, and loads once Urza has validated it); invalid, any other
//     status, and a record without one are refused for good (Refused);
//   - its checksum: the record's checksum, its metadata's, or a SHA-256
//     in its validation_report (validation_report.sha256, .checksum,
//     .artifact_sha256 or .binary_sha256) is verified while the bytes are
//     read;
//   - else the bytes first loaded for the id (trust on first use): their
//     SHA-256 is pinned to the id, saved with the state, and different
//     bytes under the same id are refused (Malformed). Config.RequireChecksum
//     refuses a record without a checksum outright.
//
// References (paths, URLs) and CompiledKernel documents are named by the
// caller, who vouches for them (a document carries its own checksum); they
// are neither status-checked nor pinned.

// checkStatus refuses a kernel whose Urza status is not validated or
// deployed.
func checkStatus(id, status string) error {
	switch contracts.KernelStatus(status) {
	case contracts.KernelStatusValidated, contracts.KernelStatusDeployed:
		return nil
	case contracts.KernelStatusTesting:
		return failure.Errorf(failure.Unavailable, "Urza says kernel %q is still testing: it is loaded once Urza marks it validated or deployed", id)
	case "":
		return failure.Errorf(failure.Refused, "Urza's record of kernel %q gives no status: only validated or deployed kernels are loaded", id)
	}
	return failure.Errorf(failure.Refused, "Urza says kernel %q is %q: only validated or deployed kernels are loaded", id, status)
}

// reportChecksum finds a SHA-256 in an Urza validation_report, "" when it
// has none (or is no JSON object: the report is free-form).
func reportChecksum(raw json.RawMessage) string {
	var report map[string]any
	if json.Unmarshal(raw, &report) != nil {
		return ""
	}
	for _, key := range []string{"sha256", "checksum", "artifact_sha256", "binary_sha256"} {
		if s, ok := report[key].(string); ok && isSHA256(s) {
			return s
		}
	}
	return ""
}

// isSHA256 reports whether s is a SHA-256 in hex.
func isSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}

// pins maps Urza artifact ids loaded without a checksum to the SHA-256
// first loaded for each.
type pins struct {
	mu sync.Mutex
	m  map[string]string
}

func (p *pins) get(id string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	sha, ok := p.m[id]
	return sha, ok
}

// pin records sha for id when id has no pin yet; undo forgets a pin it
// recorded.
func (p *pins) pin(id, sha string) (undo func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.m[id]; ok {
		return func() {}
	}
	if p.m == nil {
		p.m = make(map[string]string)
	}
	p.m[id] = sha
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.m, id)
	}
}

// all copies the pins for the State (nil when there are none).
func (p *pins) all() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) == 0 {
		return nil
	}
	return maps.Clone(p.m)
}

// restore brings back saved pins, dropping a digest that is no SHA-256.
func (p *pins) restore(saved map[string]string, log *slog.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, sha := range saved {
		if !isSHA256(sha) {
			log.Warn("state: artifact pin is not a SHA-256, dropped", slog.String("artifact_id", id))
			continue
		}
		if p.m == nil {
			p.m = make(map[string]string)
		}
		p.m[id] = sha
	}
}
