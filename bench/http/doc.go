// Package httpbench holds benchmarks of the host's HTTP API.
//
// BenchmarkInferOverLoopback: real loopback connections through net/http
// into runtime/oip's handler over the in-memory backend of
// runtime/oip/oiptest, so that the numbers are the HTTP layer's cost
// (framing, decoding, encoding, the network stack) and not a kernel's.
//
// BenchmarkHostAdapter: what the HTTP layer adds to the runtime, side by
// side on one input: runtime.Host.Infer alone, the oip adapter over the
// real Host as the handler calls it (its difference from Host.Infer is the
// adapter's cost per request), and the real handler in process over the
// real Host and over the fake backend.
//
// Run with
//
//	go test -run '^$' -bench . -benchmem ./bench/http/
package httpbench
