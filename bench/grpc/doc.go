// Package grpcbench compares the host's per-request cost on its transports
// with minimal peers, side by side in one run, over real loopback
// connections to real processes: the kasmina-host daemon (built from
// cmd/kasmina-host) and bench/grpc/echo (a net/http server echoing the
// body and a grpc-go server echoing the tensor, with the libraries'
// defaults). Each request is one client, one connection, one request at a
// time. The sides of one comparison run in one sub-benchmark, alternating
// request by request with the order rotating, so that they see the same
// machine load; each side reports its median and 99th percentile
// per-request time and its mean (NAME-p50-µs, NAME-p99-µs, NAME-mean-µs).
//
//	HTTP/{json,binary}-1x64: host, echo   Linear(64→64)+ReLU vs echoing the same body
//	gRPC/raw-1x64: host, echo             the same kernel over gRPC vs echoing the same message
//	shm/256x1024: binary-http, raw-grpc, shm-http, shm-grpc
//	                                      1 MiB in, 1 MiB out through ReLU(1024):
//	                                      Triton's binary HTTP extension vs system
//	                                      shared memory (every client puts the step's
//	                                      input where its transport takes it and copies
//	                                      the output it got into its own array)
//
// BenchmarkGRPCFrontEnd and BenchmarkHTTPFrontEnd run the front ends alone,
// in process, over an in-memory identity model, against echo peers: the
// part of a gap that is the front end's own.
//
// bench/grpc/run.sh runs rounds of it and prints the three
// ratios; by hand:
//
//	go test -run '^$' -bench . ./bench/grpc/
package grpcbench
