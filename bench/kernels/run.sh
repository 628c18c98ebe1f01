#!/usr/bin/env bash
# Runs the kernel executor benchmarks (kernels/bench_test.go) in the default
# build and, when OpenBLAS is available, with -tags openblas, then the same
# kernels in PyTorch CPU (Debian's python3-torch through /usr/bin/python3),
# and prints the ratios. Only ratios from one run on one machine mean
# anything.
#
#   bench/kernels/run.sh            # default benchtime
#   BENCHTIME=5s bench/kernels/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCHTIME=${BENCHTIME:-2s}
PY=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

benches='^(BenchmarkSeedLinear64ReLUBatch1|BenchmarkLinear512ReLUBatch32)$'
echo "== go (default build)" >&2
go test -run '^$' -bench "$benches" -benchtime "$BENCHTIME" -count 1 ./kernels | tee "$tmp/go-default.txt" >&2
if go vet -tags openblas ./kernels/gemm >/dev/null 2>&1; then
	echo "== go (-tags openblas)" >&2
	go test -tags openblas -run '^$' -bench "$benches" -benchtime "$BENCHTIME" -count 1 ./kernels | tee "$tmp/go-openblas.txt" >&2
else
	echo "== go -tags openblas does not build here (libopenblas-dev missing?); skipped" >&2
fi
echo "== pytorch" >&2
if ! "$PY" -c 'import torch' 2>/dev/null; then
	echo "PyTorch not importable by $PY; install python3-torch (apt-get install -y --no-install-recommends python3-torch libopenblas0)" >&2
	exit 1
fi
"$PY" bench/kernels/torch_bench.py | tee "$tmp/torch.jsonl" >&2

"$PY" - "$tmp" <<'PY'
import json, os, re, sys
tmp = sys.argv[1]
torch = {}
for line in open(os.path.join(tmp, "torch.jsonl")):
    r = json.loads(line)
    torch[r["name"]] = r
def parse(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        m = re.match(r"Benchmark(\S+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op\s+([\d.]+) GFLOP/s", line)
        if m:
            out[m.group(1)] = {"ns": float(m.group(3)), "gflops": float(m.group(4))}
    return out
print(f"{'kernel':<26} {'build':<9} {'go ns/op':>10} {'torch ns/op':>12} {'latency x':>10} {'go GFLOP/s':>11} {'torch GFLOP/s':>14} {'GFLOP/s ratio':>14}")
for build in ("default", "openblas"):
    for name, g in parse(os.path.join(tmp, f"go-{build}.txt")).items():
        t = torch.get(name)
        if not t:
            continue
        print(f"{name:<26} {build:<9} {g['ns']:>10.1f} {t['ns_per_op']:>12.1f} {t['ns_per_op']/g['ns']:>9.2f}x "
              f"{g['gflops']:>11.2f} {t['gflops']:>14.2f} {g['gflops']/t['gflops']:>13.2f}x")
print("latency x = PyTorch time / Go time (target >= 5x on the seed kernel); GFLOP/s ratio = Go / PyTorch (target >= 0.9x with openblas on the large kernel)")
PY
