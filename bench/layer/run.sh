#!/usr/bin/env bash
# The layer model's per-request numbers (#15), in ROUNDS interleaved rounds
# on this machine:
#  - a forward (input and default) over the Unix socket against loopback
#    TCP, the same request alternating between the two within every
#    iteration (BenchmarkLayerForwardTransport: tcp/unix per round);
#  - forward + backward in one request over the Unix socket against
#    PyTorch's in-process autograd on the same module and blend
#    (torch_layer.py, one thread), each round running one then the other.
# The table gives the median over rounds of each side's mean.
#
#   bench/layer/run.sh            # ROUNDS=5, BENCHTIME=500x, N=2000 (PyTorch)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-5}
benchtime=${BENCHTIME:-500x}
n=${N:-2000}
out=$(mktemp)
bin=$(mktemp -d)
trap 'rm -f "$out"; rm -rf "$bin"' EXIT
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
go test -c -o "$bin/layerbench.test" ./bench/layer/
for i in $(seq "$rounds"); do
	echo "== round $i of $rounds"
	(cd bench/layer && "$bin/layerbench.test" -test.run '^$' -test.bench . -test.benchtime "$benchtime" -test.count 1) | tee -a "$out"
	/usr/bin/python3 bench/layer/torch_layer.py "$n" | tee -a "$out"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "command: ROUNDS=$rounds BENCHTIME=$benchtime N=$n bench/layer/run.sh; load average $load_start → $load_end; $(nproc) CPUs"
echo
python3 - "$out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"BenchmarkLayerForwardTransport/(\S+?)-\d+\s+\d+\s+\d+ ns/op\s+([\d.]+) tcp-ns/req\s+([\d.]+) tcp/unix\s+([\d.]+) unix-ns/req", line)
    if m:
        r = rows.setdefault(m.group(1), {})
        r.setdefault("tcp", []).append(float(m.group(2)))
        r.setdefault("ratio", []).append(float(m.group(3)))
        r.setdefault("unix", []).append(float(m.group(4)))
    m = re.match(r"BenchmarkLayerForwardBackward/(\S+?)-\d+\s+\d+\s+(\d+) ns/op", line)
    if m:
        rows.setdefault(m.group(1), {}).setdefault("fb", []).append(float(m.group(2)))
    m = re.match(r"(\S+) torch-ns/op (\d+)", line)
    if m:
        rows.setdefault(m.group(1), {}).setdefault("torch", []).append(float(m.group(2)))
med = statistics.median
print("| case | forward, Unix socket | forward, loopback TCP | TCP / Unix | forward+backward, host over Unix socket | forward+backward, PyTorch in-process | host / PyTorch |")
print("|---|---|---|---|---|---|---|")
for c, r in rows.items():
    print(f"| {c} | {med(r['unix'])/1e3:.0f} µs | {med(r['tcp'])/1e3:.0f} µs | {med(r['ratio']):.2f} | "
          f"{med(r['fb'])/1e3:.0f} µs | {med(r['torch'])/1e3:.0f} µs | {med(r['fb'])/med(r['torch']):.1f}x |")
PY
