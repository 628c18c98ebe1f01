#!/usr/bin/env bash
# Runs the kernel executor benchmarks (kernels/bench_test.go) in the default
# build and, when OpenBLAS is available, with -tags openblas, then the same
# kernels in PyTorch CPU (Debian's python3-torch through /usr/bin/python3),
# and prints the ratios. Only ratios from one run on one machine mean
# anything.
#
# The machine is shared, so one long mean measures the neighbours as much as
# the code. Each side is timed as many short samples (go test -count with a
# short -benchtime; the same number of samples of the same length in
# PyTorch), the three sides take turns in ROUNDS rounds so that a busy spell
# hits them alike, and the table gives the fastest sample of each side (the
# headline ratio) next to the median sample. All sides run under the same
# environment: the script changes no OPENBLAS_* variable, and prints the ones
# set, the OpenBLAS kernel each process picked and its thread count.
#
#   bench/kernels/run.sh
#   ROUNDS=6 SAMPLES=5 SAMPLE=50ms bench/kernels/run.sh
#   TORCH_THREADS: torch.set_num_threads (default: PyTorch's own choice).
#   BENCHTIME (if set, and SAMPLE is not): total time per side and kernel,
#   split into ROUNDS x SAMPLES samples.
set -euo pipefail
cd "$(dirname "$0")/../.."

SAMPLES=${SAMPLES:-5}
ROUNDS=${ROUNDS:-4}
PY=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seconds() { "$PY" -c 'import sys,re; m=re.fullmatch(r"([\d.]+)(ns|us|ms|s|m)", sys.argv[1]); print(float(m.group(1))*{"ns":1e-9,"us":1e-6,"ms":1e-3,"s":1,"m":60}[m.group(2)] if m else 0.05)' "$1"; }
if [ -n "${SAMPLE:-}" ]; then
	sample_s=$(seconds "$SAMPLE")
elif [ -n "${BENCHTIME:-}" ]; then
	sample_s=$("$PY" -c 'import sys; print(max(0.01, float(sys.argv[1]) / int(sys.argv[2])))' "$(seconds "$BENCHTIME")" "$((ROUNDS * SAMPLES))")
else
	sample_s=0.05
fi
SAMPLE=$("$PY" -c 'import sys; print(f"{float(sys.argv[1]) * 1000:.0f}ms")' "$sample_s")

if ! "$PY" -c 'import torch' 2>/dev/null; then
	echo "PyTorch not importable by $PY; install python3-torch (apt-get install -y --no-install-recommends python3-torch libopenblas0)" >&2
	exit 1
fi
benches='^(BenchmarkSeedLinear64ReLUBatch1|BenchmarkLinear512ReLUBatch32)$'
go test -c -o "$tmp/default.test" ./kernels
builds=default
if go vet -tags openblas ./kernels/gemm >/dev/null 2>&1; then
	go test -tags openblas -c -o "$tmp/openblas.test" ./kernels
	builds="default openblas"
	setup=$(go test -tags openblas -run '^TestOpenBLASSetup$' -v -count 1 ./kernels/gemm 2>&1 | sed -n 's/.*openblas: /openblas build: /p')
else
	echo "== go -tags openblas does not build here (libopenblas-dev missing?); skipped" >&2
fi

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
echo "environment: $(env | grep -E '^(OPENBLAS_|GOTO_|OMP_|GOMAXPROCS)' | tr '\n' ' ' || true)(none other of OPENBLAS_*, GOTO_*, OMP_*, GOMAXPROCS)"
[ -n "${setup:-}" ] && echo "$setup"
echo "samples: $ROUNDS rounds x $SAMPLES samples of $SAMPLE per side and kernel"
for r in $(seq "$ROUNDS"); do
	for b in $builds; do
		echo "== go ($b build), round $r" >&2
		(cd kernels && "$tmp/$b.test" -test.run '^$' -test.bench "$benches" -test.benchtime "$SAMPLE" -test.count "$SAMPLES") | tee -a "$tmp/go-$b.txt" >&2
	done
	echo "== pytorch, round $r" >&2
	"$PY" bench/kernels/torch_bench.py "$SAMPLES" "$sample_s" "${TORCH_THREADS:-0}" | tee -a "$tmp/torch.jsonl" >&2
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$tmp" <<'PY'
import json, os, re, statistics, sys
tmp = sys.argv[1]
torch, info = {}, None
for line in open(os.path.join(tmp, "torch.jsonl")):
    r = json.loads(line)
    torch.setdefault(r["name"], []).extend(r["samples_ns"])
    info = r
if info:
    ob = info.get("openblas") or {}
    print(f"pytorch {info['torch']}: torch threads={info['threads']}, OpenBLAS core={ob.get('core')} threads={ob.get('threads')} config={ob.get('config')!r}")
def parse(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        m = re.match(r"Benchmark(\S+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op", line)
        if m:
            out.setdefault(m.group(1), []).append(float(m.group(3)))
    return out
macs = {"SeedLinear64ReLUBatch1": 64 * 64 * 1, "Linear512ReLUBatch32": 512 * 512 * 32}
print(f"{'kernel':<26} {'build':<9} {'go ns/op':>10} {'torch ns/op':>12} {'latency x':>10} {'go GFLOP/s':>11} {'torch GFLOP/s':>14} {'GFLOP/s ratio':>14} {'go median':>10} {'torch median':>13} {'median ratio':>13}")
for build in ("default", "openblas"):
    for name, g in parse(os.path.join(tmp, f"go-{build}.txt")).items():
        t = torch.get(name)
        if not t or name not in macs:
            continue
        gb, tb, gm, tm = min(g), min(t), statistics.median(g), statistics.median(t)
        ggf, tgf = 2 * macs[name] / gb, 2 * macs[name] / tb
        print(f"{name:<26} {build:<9} {gb:>10.1f} {tb:>12.1f} {tb/gb:>9.2f}x {ggf:>11.2f} {tgf:>14.2f} {ggf/tgf:>13.2f}x {gm:>10.1f} {tm:>13.1f} {tm/gm:>12.2f}x")
n = len(next(iter(torch.values()), []))
print(f"ns/op and GFLOP/s: fastest of {n} samples per side; median: the median sample. latency x = PyTorch time / Go time (target >= 5x on the seed kernel);")
print("GFLOP/s ratio = Go / PyTorch (target >= 0.9x with openblas on the large kernel, >= 0.7x default); median ratio = PyTorch median / Go median")
PY
