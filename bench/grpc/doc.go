// Package grpcbench compares the host's per-request cost on its transports
// with minimal peers, side by side in one run, over real loopback
// connections to real processes: the kasmina-host daemon (built from
// cmd/kasmina-host) and bench/grpc/echo (a net/http server echoing the
// body and a grpc-go server echoing the tensor, with the libraries'
// defaults). Each request is one client, one connection, one request at a
// time; the sub-benchmarks report the mean (ns/op) and the median and 99th
// percentile of the per-request time (p50-µs, p99-µs).
//
//	HTTP/{json,binary}-1x64/{host,echo}   Linear(64→64)+ReLU vs echoing the same body
//	gRPC/raw-1x64/{host,echo}             the same kernel over gRPC vs echoing the same message
//	shm/256x1024/{binary-http,shm-http,shm-grpc,raw-grpc}
//	                                      1 MiB in, 1 MiB out through ReLU(1024):
//	                                      Triton's binary HTTP extension vs system
//	                                      shared memory (the client writes the input
//	                                      into the region and reads the output back
//	                                      every request)
//
// BenchmarkGRPCFrontEnd and BenchmarkHTTPFrontEnd run the front ends alone,
// in process, over an in-memory identity model, against echo peers: the
// part of a gap that is the front end's own.
//
// bench/grpc/run.sh runs rounds of it (interleaved: go test -count repeats
// each sub-benchmark back to back) and prints the three ratios; by
// hand:
//
//	go test -run '^$' -bench . ./bench/grpc/
package grpcbench
