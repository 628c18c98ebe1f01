#!/usr/bin/env bash
# Atomic grafts under load: starts `kasmina-host serve` (no examples, a
# temporary --kernel-root) and runs bench/graft (a Go load generator):
# closed-loop HTTP clients call one seed's kernel at the rate the daemon
# answers, first alone, then while 100 load_kernel swaps (the
# seed-control route, the Apply a bus command runs) alternate two
# artifacts of that kernel in its slot. Exits 1 on any non-2xx answer, a
# transport error, an output of neither kernel or a failed swap.
#
#   bench/graft/run.sh [CLIENTS] [DURATION]    # default 16 10s per phase
#   JSON_OUT=FILE (the result as one JSON object)
set -euo pipefail
KH_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
source "$KH_ROOT/bench/load/daemon.sh"
kh_need go curl python3
clients=${1:-16}
dur=${2:-10s}
root=$(mktemp -d)
trap 'kh_stop; rm -rf "$root"' EXIT
kh_start --no-examples --kernel-root "$root"
(cd "$KH_ROOT" && go build -o "$KH_TMP/graft" ./bench/graft)
echo "graft: $clients clients, $dur per phase, against $KH_URL (pid $KH_PID); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$KH_TMP/graft" -url "$KH_URL" -root "$root" -clients "$clients" -duration "$dur" -swaps 100 >"$KH_TMP/graft.txt" || rc=$?
cat "$KH_TMP/graft.txt" | head -1
[[ -n "${JSON_OUT:-}" ]] && tail -1 "$KH_TMP/graft.txt" >"$JSON_OUT"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit "${rc:-0}"
