#!/usr/bin/env bash
# Load test: N concurrent wrk connections for a fixed time on loopback
# against `kasmina-host serve` (the embedded example kernels, or
# KERNELS_DIR), cycling batch-1 JSON inference requests over every loaded
# kernel. Reports requests/s, p50/p90/p99, 5xx and socket errors, and the
# daemon's peak RSS (VmHWM); exits 1 on any 5xx or socket error.
#
#   bench/load/run.sh [CONNECTIONS] [DURATION]    # default 64 30s
#   THREADS=2 (wrk threads)  JSON_OUT=FILE (the result as one JSON object)
set -euo pipefail
KH_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
source "$KH_ROOT/bench/load/daemon.sh"
kh_need go curl python3 wrk
conns=${1:-64}
dur=${2:-30s}
threads=${THREADS:-2}
((threads > conns)) && threads=$conns

trap kh_stop EXIT
kh_start
kh_wrk_script "$KH_TMP/load.lua"
rss0=$(kh_proc VmRSS)
echo "load: $conns connections, $threads wrk threads, $dur, against $KH_URL (pid $KH_PID)" >&2
wrk -t "$threads" -c "$conns" -d "$dur" --latency -s "$KH_TMP/load.lua" "$KH_URL" >"$KH_TMP/wrk.txt"
hwm=$(kh_proc VmHWM)
rss1=$(kh_proc VmRSS)
gor=$(kh_metric go_goroutines)
fds=$(kh_fds)
grep -v '^WRKJSON' "$KH_TMP/wrk.txt" >&2
python3 - "$(grep '^WRKJSON' "$KH_TMP/wrk.txt" | cut -d' ' -f2-)" "$conns" "$dur" "$rss0" "$rss1" "$hwm" "$gor" "$fds" "${JSON_OUT:-}" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r.update(connections=int(sys.argv[2]), duration=sys.argv[3], rss_start_mib=int(sys.argv[4]) / 1024,
         rss_end_mib=int(sys.argv[5]) / 1024, peak_rss_mib=int(sys.argv[6]) / 1024,
         goroutines_end=int(sys.argv[7]), fds_end=int(sys.argv[8]))
errs = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
print(f"load: {r['connections']} connections for {r['duration']} over {r['kernels']} kernels: "
      f"{r['requests']} requests, {r['rps']:.0f} req/s, p50 {r['p50_us']/1000:.2f} ms, p90 {r['p90_us']/1000:.2f} ms, "
      f"p99 {r['p99_us']/1000:.2f} ms, max {r['max_us']/1000:.1f} ms; {r['status_5xx']} 5xx, {r['status_4xx']} 4xx, "
      f"{errs} socket errors; RSS {r['rss_start_mib']:.0f} MiB at start, peak {r['peak_rss_mib']:.0f} MiB, "
      f"{r['rss_end_mib']:.0f} MiB at end; {r['goroutines_end']} goroutines, {r['fds_end']} fds after")
if sys.argv[9]:
    json.dump(r, open(sys.argv[9], "w"))
sys.exit(1 if r["status_5xx"] or errs else 0)
PY
