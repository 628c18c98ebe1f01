#!/bin/sh
# Runs kernels/gemm's benchmarks in the default build and the openblas build,
# PyTorch on the same shapes, and the FMA peak loop, then prints one table of
# GFLOP/s, ratios and fraction of peak. Needs Debian's python3-torch
# (/usr/bin/python3) and libopenblas-dev; missing parts are left out.
#   BENCHTIME (default 1s)  go test -benchtime per shape
#   COUNT (default 3)       rounds; the best round counts
set -eu
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bt=${BENCHTIME:-1s}
count=${COUNT:-3}
threads=$(go env GOMAXPROCS 2>/dev/null || true)
[ -n "$threads" ] || threads=$(nproc)
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; flags: $(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "== default build (cgo-free)"
CGO_ENABLED=0 go test -run '^$' -bench 'Shapes|FMAPeak' -benchtime "$bt" -count "$count" ./kernels/gemm/ | tee "$out/default.txt" | grep -E 'Benchmark' || true
if echo '#include <cblas.h>' | cc -E - >/dev/null 2>&1; then
	echo "== openblas build"
	go test -tags openblas -run '^$' -bench 'Shapes/impl=openblas' -benchtime "$bt" -count "$count" ./kernels/gemm/ | tee "$out/openblas.txt" | grep -E 'Benchmark' || true
else
	echo "== openblas build skipped: no cblas.h (apt-get install libopenblas-dev)"
fi
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
	echo "== PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), $(nproc) threads"
	/usr/bin/python3 bench/gemm/torch_bench.py "$(nproc)" | tee "$out/torch.txt"
else
	echo "== PyTorch skipped: /usr/bin/python3 has no torch (apt-get install python3-torch libopenblas0)"
fi
echo
/usr/bin/python3 bench/gemm/table.py "$out/default.txt" "$out/openblas.txt" "$out/torch.txt"
