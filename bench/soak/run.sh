#!/usr/bin/env bash
# Soak test (not in CI): `kasmina-host serve` on the embedded example
# kernels (or KERNELS_DIR) under continuous wrk load for MINUTES, sampling
# every SAMPLE seconds the daemon's RSS (/proc/PID/status VmRSS), goroutines
# (the go_goroutines metric), open file descriptors (/proc/PID/fd and the
# process_open_fds metric) and the requests served. It prints a table and
# compares the first sample under load (after the warm-up) with the last:
# goroutines within +5, descriptors within +4, RSS within +20 % + 10 MiB,
# else it exits 1. Any 5xx or socket error also fails it.
#
#   bench/soak/run.sh [MINUTES]        # default 10
#   SAMPLE=30 CONNECTIONS=8 THREADS=1 SOAK_SECS=(overrides MINUTES)
set -euo pipefail
KH_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
source "$KH_ROOT/bench/load/daemon.sh"
kh_need go curl python3 wrk
minutes=${1:-10}
sample=${SAMPLE:-30}
conns=${CONNECTIONS:-8}
threads=${THREADS:-1}
secs=${SOAK_SECS:-$((minutes * 60))} # SOAK_SECS overrides MINUTES (short trial runs)

trap 'kill "${wrk_pid:-}" 2>/dev/null || true; kh_stop' EXIT
kh_start
kh_wrk_script "$KH_TMP/load.lua"
echo "soak: ${minutes} min, $conns connections, $threads wrk thread(s), sample every ${sample}s, daemon pid $KH_PID on $KH_URL"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

row() { # elapsed label
	printf '%7s %-6s %9s %10s %6s %8s %12s\n' "$1" "$2" "$(($(kh_proc VmRSS) / 1024))" "$(kh_metric go_goroutines)" \
		"$(kh_fds)" "$(kh_metric process_open_fds)" "$(kh_metric kasmina_http_requests_total)"
}
printf '%7s %-6s %9s %10s %6s %8s %12s\n' elapsed when rss_mib goroutines fds open_fds http_requests | tee "$KH_TMP/samples.txt"
row 0s idle | tee -a "$KH_TMP/samples.txt"
wrk -t "$threads" -c "$conns" -d "${secs}s" --latency -s "$KH_TMP/load.lua" "$KH_URL" >"$KH_TMP/wrk.txt" &
wrk_pid=$!
t0=$SECONDS
while kill -0 "$wrk_pid" 2>/dev/null; do
	sleep "$sample"
	kill -0 "$wrk_pid" 2>/dev/null || break
	el=$((SECONDS - t0))
	when=load
	((el <= sample)) && when=warm
	row "${el}s" "$when" | tee -a "$KH_TMP/samples.txt"
done
wait "$wrk_pid" || true
wrk_pid=
row "$((SECONDS - t0))s" after | tee -a "$KH_TMP/samples.txt"
hwm=$(($(kh_proc VmHWM) / 1024))
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); peak RSS (VmHWM) ${hwm} MiB"
python3 - "$KH_TMP/samples.txt" "$(grep '^WRKJSON' "$KH_TMP/wrk.txt" | cut -d' ' -f2-)" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
load = [r for r in rows if r[1] in ("warm", "load")]
if len(load) < 2:
    print("soak: too short to compare (need two samples under load)"); sys.exit(1)
first, last = load[0], load[-1]
w = json.loads(sys.argv[2])
rss0, rss1 = int(first[2]), int(last[2])
g0, g1 = int(first[3]), int(last[3])
f0, f1 = int(first[4]), int(last[4])
ok_rss = rss1 <= rss0 * 1.2 + 10
ok_g = g1 <= g0 + 5
ok_f = f1 <= f0 + 4
errs = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
print(f"soak: {w['requests']} requests in {w['duration_s']:.0f}s ({w['rps']:.0f} req/s), p50 {w['p50_us']/1000:.2f} ms, "
      f"p99 {w['p99_us']/1000:.2f} ms; {w['status_5xx']} 5xx, {errs} socket errors")
print(f"soak: from {first[0]} to {last[0]} under load: RSS {rss0} -> {rss1} MiB ({'flat' if ok_rss else 'GROWING'}), "
      f"goroutines {g0} -> {g1} ({'flat' if ok_g else 'GROWING'}), fds {f0} -> {f1} ({'flat' if ok_f else 'GROWING'})")
sys.exit(0 if ok_rss and ok_g and ok_f and not w["status_5xx"] and not errs else 1)
PY
