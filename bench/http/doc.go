// Package httpbench holds end-to-end benchmarks of the host's HTTP API: real
// loopback connections through net/http into runtime/oip's handler over the
// in-memory backend of runtime/oip/oiptest, so that the numbers are the
// HTTP layer's cost (framing, decoding, encoding, the network stack) and not
// a kernel's. Run with
//
//	go test -run '^$' -bench . ./bench/http/
package httpbench
