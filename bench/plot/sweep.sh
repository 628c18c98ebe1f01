#!/usr/bin/env bash
# Latency against batch size, Linear(512→512)+ReLU, batch 1..256: the host
# (`kasmina-host run --repeat N --json`, default build) and PyTorch CPU
# (Debian's /usr/bin/python3 with python3-torch), same weights and inputs,
# same thread count; then a PNG. Prints a table on stdout.
#
#   bench/plot/sweep.sh [OUT.png]      # default bench/plot/latency_vs_batch.png
#   REPEAT=300 (host calls per batch; PyTorch runs for the same ~time)
#   BATCHES="1 2 4 8 16 32 64 128 256"
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out=${1:-bench/plot/latency_vs_batch.png}
repeat=${REPEAT:-300}
batches=${BATCHES:-1 2 4 8 16 32 64 128 256}
threads=$(nproc)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap '[ -s "$tmp/run.err" ] && cat "$tmp/run.err" >&2' ERR
go build -o "$tmp/kasmina-host" ./cmd/kasmina-host
go run ./bench/plot/mkinputs -dir "$tmp" -batches "$(tr ' ' , <<<"$batches")"
for b in $batches; do
	"$tmp/kasmina-host" run --kernel "$tmp/kernel.safetensors" --input "$tmp/input-b$b.safetensors" --repeat "$repeat" --json 2>"$tmp/run.err" |
		python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'batch': $b, 'p50_us': r['p50_us'], 'p99_us': r['p99_us'], 'gflops': r['gflops']}))" >>"$tmp/host.jsonl"
done
/usr/bin/python3 bench/plot/torch_latency.py "$tmp" "$threads" $batches >"$tmp/torch.jsonl"
python3 - "$tmp/host.jsonl" "$tmp/torch.jsonl" <<'PY'
import json, sys
h = {r["batch"]: r for r in map(json.loads, open(sys.argv[1]))}
t = {r["batch"]: r for r in map(json.loads, open(sys.argv[2]))}
print(f"{'batch':>6} {'host p50 us':>12} {'host p99 us':>12} {'torch p50 us':>13} {'torch p99 us':>13} {'torch/host':>11}")
for b in sorted(h):
    print(f"{b:>6} {h[b]['p50_us']:>12.1f} {h[b]['p99_us']:>12.1f} {t[b]['p50_us']:>13.1f} {t[b]['p99_us']:>13.1f} {t[b]['p50_us']/h[b]['p50_us']:>10.2f}x")
PY
title="Linear(512→512)+ReLU, $(lscpu | sed -n 's/^Model name: *//p'), $threads threads"
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
	/usr/bin/python3 bench/plot/plot.py "$tmp/host.jsonl" "$tmp/torch.jsonl" "$out" "$title"
	echo "plot: $out"
else
	echo "plot skipped: /usr/bin/python3 has no matplotlib (apt-get install -y --no-install-recommends python3-matplotlib)" >&2
fi
