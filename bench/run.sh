#!/usr/bin/env bash
# The Kasmina host's benchmark suite: every side-by-side comparison, on this
# machine, in one go, and one table of ratios with the target beside each.
#
#   bench/run.sh              # full run (about 8–10 minutes on 2 cores)
#   QUICK=1 bench/run.sh      # short benchtimes, one round each (~3 minutes)
#   WRITE_README=0 ...        # do not rewrite the results block of bench/README.md
#   RESULTS_DIR=DIR ...       # keep every raw log there (default: a temporary dir)
#
# Comparisons (each script also runs on its own):
#   contracts vs Pydantic v2          bench/contracts/run.sh   (python3 with pydantic)
#   CPU executor vs PyTorch           bench/kernels/run.sh     (default and -tags openblas)
#   SGEMM vs OpenBLAS vs PyTorch      bench/gemm/run.sh        (+ the FMA peak)
#   HTTP /infer under wrk vs in-process (kasmina-host run --repeat) on Linear(64→64)+ReLU
#   bus publishing vs redis-benchmark bench/oona/run.sh
#   placement decisions per second    runtime/placement BenchmarkPlan8GPU (one core)
#   dispatch overhead per call        runtime BenchmarkDispatchOverhead (Host.Infer − kernel.Run)
#   latency against batch size (PNG)  bench/plot/sweep.sh
# A comparison whose tools are missing (PyTorch, redis, wrk) is reported as
# skipped with the package to install, and the rest still runs.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
KH_ROOT=$root
source bench/load/daemon.sh

quick=${QUICK:-0}
out=${RESULTS_DIR:-$(mktemp -d)}
mkdir -p "$out"
[[ -z "${RESULTS_DIR:-}" ]] && trap 'kh_stop; rm -rf "$out"' EXIT || trap 'kh_stop' EXIT
if [[ "$quick" == 1 ]]; then
	rounds=1 count=1 oona_n=50000 oona_rounds=1 wrk_d=4s repeat=100 gobt=300ms
	kernels_env=(ROUNDS=2 SAMPLES=3)
else
	rounds=3 count=2 oona_n=200000 oona_rounds=3 wrk_d=10s repeat=400 gobt=1s
	kernels_env=() # bench/kernels/run.sh's own sampling defaults
fi
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$SECONDS
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
cpu_model=$(lscpu | sed -n 's/^Model name: *//p')
{
	echo "date: $started"
	echo "cpu: $cpu_model, $(nproc) CPUs ($(lscpu | sed -n 's/^Core(s) per socket: *//p') cores/socket, $(lscpu | sed -n 's/^Thread(s) per core: *//p') threads/core); flags: $(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
	echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
	echo "go: $(go version | cut -d' ' -f3-)"
	echo "pytorch: $(/usr/bin/python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)"
	echo "pydantic: $(python3 -c 'import pydantic; print(pydantic.VERSION)' 2>/dev/null || echo missing)"
	echo "redis: $(redis-server --version 2>/dev/null | awk '{print $3}' || echo missing)"
	echo "wrk: $(wrk --version 2>&1 | head -1 | awk '{print $2}')"
	echo "load average at start: $load_start"
	echo "command: $([[ $quick == 1 ]] && echo 'QUICK=1 ')bench/run.sh"
} >"$out/machine.txt"
cat "$out/machine.txt"

step() { echo; echo "=== $1 ($(($SECONDS - t_start))s)"; }
# Steps that failed (not skipped for a missing tool): bench/README.md is
# not rewritten from partial results, and the script exits 1.
failed=()

step "contracts vs Pydantic"
if python3 -c 'import pydantic, sys; sys.exit(0 if pydantic.VERSION.startswith("2") else 1)' 2>/dev/null; then
	bench/contracts/run.sh "$rounds" 2>&1 | tee "$out/contracts.txt" || failed+=(contracts)
else
	echo "skipped: python3 has no Pydantic v2" | tee "$out/contracts.txt"
fi

step "CPU executor vs PyTorch"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
	env "${kernels_env[@]}" bench/kernels/run.sh 2>"$out/kernels.err" | tee "$out/kernels.txt" || { cat "$out/kernels.err"; failed+=(kernels); }
else
	echo "skipped: /usr/bin/python3 has no torch (apt-get install -y --no-install-recommends python3-torch libopenblas0)" | tee "$out/kernels.txt"
fi

step "SGEMM: default vs openblas vs PyTorch, FMA peak"
BENCHTIME=$gobt COUNT=$count bench/gemm/run.sh 2>&1 | tee "$out/gemm.txt" | grep -v '^Benchmark' || failed+=(gemm)

step "placement decisions per second (one core)"
go test -run '^$' -bench '^BenchmarkPlan8GPU$' -benchtime "$gobt" -count "$count" -cpu 1 ./runtime/placement 2>&1 | tee "$out/placement.txt" | grep Benchmark || failed+=(placement)

step "dispatch overhead per call"
go test -run '^$' -bench '^BenchmarkDispatchOverhead$' -benchtime "$gobt" -count "$count" ./runtime 2>&1 | tee "$out/dispatch.txt" | grep Benchmark || failed+=(dispatch)

step "bus publishing vs redis-benchmark"
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
	ROUNDS=$oona_rounds bench/oona/run.sh "$oona_n" 2>&1 | tee "$out/oona.txt" | tail -4 || failed+=(oona)
else
	echo "skipped: redis-server/redis-benchmark missing (apt-get install -y redis-server redis-tools)" | tee "$out/oona.txt"
fi

step "HTTP /infer under wrk vs the in-process call"
if command -v wrk >/dev/null; then
	mkdir -p "$out/http"
	go run ./bench/plot/mkinputs -dir "$out/http" -in 64 -out 64 -batches 1
	KERNELS_DIR="$out/http" kh_start
	kh_wrk_script "$out/http/one.lua" linear-64-64
	for c in 1 32; do
		wrk -t "$((c < 2 ? 1 : 2))" -c "$c" -d "$wrk_d" --latency -s "$out/http/one.lua" "$KH_URL" >"$out/http/wrk-c$c.txt"
		grep '^WRKJSON' "$out/http/wrk-c$c.txt" | cut -d' ' -f2- | tee "$out/http/wrk-c$c.json"
	done
	echo "{\"peak_rss_kib\": $(kh_proc VmHWM)}" >"$out/http/rss.json"
	"$KH_TMP/kasmina-host" run --kernel "$out/http/kernel.safetensors" --input "$out/http/input-b1.safetensors" \
		--repeat 20000 --json 2>/dev/null | tee "$out/http/inproc.json"
	kh_stop
	go test -run '^$' -bench 'BenchmarkInferOverLoopback/json/1x64$' -benchtime "$gobt" ./bench/http 2>&1 | tee "$out/http/go-loopback.txt" | grep Benchmark
else
	mkdir -p "$out/http"
	echo "skipped: wrk missing (apt-get install -y --no-install-recommends wrk)" | tee "$out/http/skipped"
fi

step "latency against batch size (plot)"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
	REPEAT=$repeat bench/plot/sweep.sh bench/plot/latency_vs_batch.png 2>&1 | tee "$out/sweep.txt" || failed+=(sweep)
else
	echo "skipped: /usr/bin/python3 has no torch (apt-get install -y --no-install-recommends python3-torch libopenblas0)" | tee "$out/sweep.txt"
fi

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at end: $load_end" >>"$out/machine.txt"
echo "wall time: $((SECONDS - t_start)) s" >>"$out/machine.txt"

step "summary"
if ! python3 bench/summary.py "$out" >"$out/summary.md"; then
	echo "bench/summary.py failed: bench/README.md left as it was; raw results in $out" >&2
	exit 1
fi
cat "$out/summary.md"
if [ ${#failed[@]} -gt 0 ]; then
	echo "failed steps: ${failed[*]}; bench/README.md left as it was; raw results in $out" >&2
	exit 1
fi
if [[ "${WRITE_README:-1}" == 1 ]]; then
	python3 - "$out/summary.md" bench/README.md <<'PY'
import sys
summary = open(sys.argv[1]).read().strip()
if not summary:
    sys.exit("empty summary; bench/README.md left as it was")
path = sys.argv[2]
text = open(path).read()
begin, end = "<!-- bench/run.sh results: begin -->", "<!-- bench/run.sh results: end -->"
i, j = text.find(begin), text.find(end)
if i < 0 or j < 0:
    sys.exit(f"{path} has no {begin} … {end} block; results not written")
open(path, "w").write(text[: i + len(begin)] + "\n" + summary + "\n" + text[j:])
print(f"results written into {path}")
PY
fi
