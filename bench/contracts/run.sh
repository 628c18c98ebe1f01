#!/usr/bin/env bash
# Runs the contracts codec benchmarks in Go and the same work in Pydantic v2
# side by side on this machine and prints a ratio table (Pydantic / Go):
# a HealthSignal, the bench CompiledKernel and a small CompiledKernel
# (required fields, a device list, two timestamps, a checksum).
#
#   bench/contracts/run.sh [ROUNDS]
#
# Each of ROUNDS rounds (default 3) runs the Go benchmarks and the
# Pydantic timings, interleaved so both see the same machine load. Both
# sides take the same number of equally short samples (15 of about 50 ms
# per round; Go's include GC) and the table uses each
# benchmark's fastest sample over all rounds: on a shared machine other
# work only ever adds time, and short samples are likelier to see none.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rounds="${1:-3}"
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$root" && go test -c -o "$tmp/contracts.test" ./contracts/)
for ((i = 1; i <= rounds; i++)); do
	(cd "$root/contracts" && "$tmp/contracts.test" -test.run '^$' \
		-test.bench '^Benchmark(HealthSignal|CompiledKernel|CompiledKernelSmall)(Decode|Encode)$' \
		-test.benchtime 50ms -test.count 15) | awk '/^Benchmark/ {sub(/-[0-9]+$/, "", $1); print $1, $3}' >>"$tmp/go.txt"
	"$python" "$here/pydantic_bench.py" >>"$tmp/py.txt"
done

"$python" - "$tmp/go.txt" "$tmp/py.txt" <<'PY'
import sys
def best(path):
    out = {}
    for line in open(path):
        name, ns = line.split()
        out[name] = min(out.get(name, float("inf")), float(ns))
    return out
go, py = best(sys.argv[1]), best(sys.argv[2])
print(f"{'benchmark':<32} {'Go ns/op':>10} {'Pydantic ns/op':>15} {'speed-up':>9}")
worst = float("inf")
for name in sorted(go):
    ratio = py[name] / go[name]
    worst = min(worst, ratio)
    print(f"{name:<32} {go[name]:>10.0f} {py[name]:>15.0f} {ratio:>8.1f}x")
print(f"lowest speed-up {worst:.1f}x (target >= 3x)")
PY
