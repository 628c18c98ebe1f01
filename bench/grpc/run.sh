#!/usr/bin/env bash
# The issue's three per-request ratios, side by side in one run, on this
# machine: the host's HTTP time against a minimal net/http server echoing
# the same body, its gRPC time against a minimal grpc-go server echoing
# the same message (both on Linear(64→64)+ReLU, batch 1, one connection,
# one request at a time), and system shared memory against Triton's binary
# HTTP extension at 256×1024 FP32 (1 MiB in, 1 MiB out, ReLU). Each ratio
# is the median over COUNT rounds of the round's ratio of per-request p50s;
# within a round the sides of a comparison run interleaved, request by
# request.
#
#   bench/grpc/run.sh            # COUNT=5 rounds, BENCHTIME=400x requests per sub-benchmark
#   WRITE_README=1 bench/grpc/run.sh   # also rewrite the block in bench/README.md
set -euo pipefail
cd "$(dirname "$0")/../.."
count=${COUNT:-5}
benchtime=${BENCHTIME:-400x}
out=$(mktemp)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Both sides of a ratio run in one sub-benchmark, alternating request by
# request (the order rotating), so that they see the same machine load;
# rounds of one -count=1 run each repeat the whole set. The front-end rows (in-process,
# the runtime replaced by an in-memory identity model) say how much of a
# gap is the front end's own.
bin=$(mktemp -d)
trap 'rm -f "$out"; rm -rf "$bin"' EXIT
go test -c -o "$bin/grpcbench.test" ./bench/grpc/
cmd="for i in \$(seq $count); do go test -run '^\$' -bench . -benchtime $benchtime -count 1 ./bench/grpc/; done"
for i in $(seq "$count"); do
	echo "== round $i of $count"
	(cd bench/grpc && "$bin/grpcbench.test" -test.run '^$' -test.bench . -test.benchtime "$benchtime" -test.count 1) | tee -a "$out"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
table=$(python3 - "$out" <<'PY'
import re, statistics, sys
p50 = {}
mean = {}
# Each comparison is one sub-benchmark whose sides ran interleaved; it
# reports NAME-p50-µs and NAME-mean-µs for every side.
for line in open(sys.argv[1]):
    m = re.match(r"Benchmark(\w+)/(\S+)-\d+\s", line)
    if not m:
        continue
    prefix = m.group(2) if m.group(1) == "Transports" else m.group(1) + "/" + m.group(2)
    for v, side in re.findall(r"([\d.]+) ([\w-]+)-p50-µs", line):
        p50.setdefault(prefix + "/" + side, []).append(float(v))
    for v, side in re.findall(r"([\d.]+) ([\w-]+)-mean-µs", line):
        mean.setdefault(prefix + "/" + side, []).append(float(v))
med = {k: statistics.median(v) for k, v in p50.items()}
avg = {k: statistics.median(v) for k, v in mean.items()}
rows = [
    ("HTTP JSON 1×64, host vs net/http echo", "HTTP/json-1x64/host", "HTTP/json-1x64/echo", "≤ 1.1x", lambda r: r <= 1.1, "slower"),
    ("HTTP binary 1×64, host vs net/http echo", "HTTP/binary-1x64/host", "HTTP/binary-1x64/echo", "≤ 1.1x", lambda r: r <= 1.1, "slower"),
    ("gRPC 1×64, host vs grpc-go echo", "gRPC/raw-1x64/host", "gRPC/raw-1x64/echo", "≤ 1.1x", lambda r: r <= 1.1, "slower"),
    ("256×1024 FP32: binary HTTP vs shared memory over HTTP", "shm/256x1024/binary-http", "shm/256x1024/shm-http", "≥ 3x", lambda r: r >= 3, "faster"),
    ("256×1024 FP32: binary HTTP vs shared memory over gRPC", "shm/256x1024/binary-http", "shm/256x1024/shm-grpc", "≥ 3x", lambda r: r >= 3, "faster"),
    ("256×1024 FP32: raw gRPC vs shared memory over gRPC", "shm/256x1024/raw-grpc", "shm/256x1024/shm-grpc", "report", None, "faster"),
    ("front end only: oip (in-memory model) vs echo handler, JSON 1×64", "HTTPFrontEnd/json-1x64/oip", "HTTPFrontEnd/json-1x64/echo", "report", None, "slower"),
    ("front end only: oip (in-memory model) vs echo handler, binary 1×64", "HTTPFrontEnd/binary-1x64/oip", "HTTPFrontEnd/binary-1x64/echo", "report", None, "slower"),
    ("front end only: oipgrpc (in-memory model) vs grpc-go echo, 1×64", "GRPCFrontEnd/1x64/oipgrpc", "GRPCFrontEnd/1x64/echo", "report", None, "slower"),
    ("front end only: oipgrpc without metrics vs grpc-go echo, 1×64", "GRPCFrontEnd/1x64/oipgrpc-no-metrics", "GRPCFrontEnd/1x64/echo", "report", None, "slower"),
]
# The ratio is the median of the rounds' ratios of p50s: the two sides of
# a round ran interleaved, under the same load, while the load changes
# from round to round (a ratio of the medians would divide one round's
# numerator by another's denominator). Its range over the rounds follows.
print("| comparison | p50 (median of rounds) | mean | ratio (median of rounds) | rounds | target | |")
print("|---|---|---|---|---|---|---|")
for name, a, b, target, ok, word in rows:
    if a not in med or b not in med or len(p50[a]) != len(p50[b]):
        print("| %s | missing | | | | %s | skipped |" % (name, target))
        continue
    ratios = [x / y for x, y in zip(p50[a], p50[b])]
    r = statistics.median(ratios)
    verdict = "—" if ok is None else ("meets" if ok(r) else "**misses**")
    print("| %s | %.0f µs vs %.0f µs | %.0f µs vs %.0f µs | %.3fx %s | %.2f–%.2f | %s | %s |" % (
        name, med[a], med[b], avg[a], avg[b], r, word, min(ratios), max(ratios), target, verdict))
PY
)
summary=$(printf 'Machine: %s, %s CPUs; %s; load average %s at start, %s at end.\n\nCommand: `%s` (bench/grpc/run.sh)\n\n%s\n' \
	"$(lscpu | sed -n 's/^Model name: *//p')" "$(nproc)" "$(go version | cut -d' ' -f3)" "$load_start" "$load_end" "$cmd" "$table")
echo
echo "$summary"
if [[ "${WRITE_README:-0}" == 1 ]]; then
	python3 - bench/README.md "$summary" <<'PY'
import sys
path, block = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
begin, end = "<!-- bench/grpc/run.sh results: begin -->", "<!-- bench/grpc/run.sh results: end -->"
i, j = text.index(begin) + len(begin), text.index(end)
open(path, "w", encoding="utf-8").write(text[:i] + "\n" + block + "\n" + text[j:])
PY
	echo "bench/README.md updated"
fi
