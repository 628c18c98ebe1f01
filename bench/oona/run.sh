#!/usr/bin/env bash
# Health signals per second through the Kasmina host's Oona publisher
# against a local redis-server, side by side with redis-benchmark doing XADD
# of an entry the size of one health message on one connection with -P equal
# to the publisher's batch size. Prints the rates and ratios (target >= 60%
# for health signals published the way the runtime publishes them).
# Usage: bench/oona/run.sh [N] (default 200000 messages; ROUNDS=3).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-200000}
BATCH=256 # PublisherOptions.BatchSize default
ROUNDS=${ROUNDS:-3}
for bin in redis-server redis-benchmark redis-cli go; do
	command -v "$bin" >/dev/null || { echo "missing $bin (apt-get install redis-server redis-tools)" >&2; exit 1; }
done

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
	--daemonize no --loglevel warning >"$dir/redis.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done

# One health message's wire fields, exactly as the publisher writes them.
OONA_BENCH_ENTRY_OUT="$dir/entry" go test -count=1 -run '^TestWriteBenchEntry$' ./runtime/oona >/dev/null
mapfile -d '' fields <"$dir/entry"
bytes=0
for f in "${fields[@]}"; do bytes=$((bytes + ${#f})); done
echo "entry: ${#fields[@]} field names/values, $bytes bytes; $N messages; batch/pipeline $BATCH; $ROUNDS rounds, best of each"

go test -c -o "$dir/oona.test" ./runtime/oona
# Rounds interleave redis-benchmark and the publisher so that both see the
# same machine load. health_signal: each signal made into an OonaMessage
# and published as the runtime does it; message: Publish of messages built
# beforehand.
best_rb=0
declare -A best_go=([health_signal]=0 [message]=0)
for _ in $(seq "$ROUNDS"); do
	redis-cli -p "$port" del telemetry.seed.health >/dev/null
	rps=$(redis-benchmark -p "$port" -c 1 -P "$BATCH" -n "$N" -q --csv \
		XADD telemetry.seed.health MAXLEN '~' 100000 '*' "${fields[@]}" |
		python3 -c 'import sys; print(sys.stdin.read().strip().splitlines()[-1].rsplit(",", 7)[1].strip("\""))')
	best_rb=$(python3 -c "print(max(float('$best_rb'), float('$rps')))")
	for sub in health_signal message; do
		rate=$(OONA_BENCH_REDIS="127.0.0.1:$port" "$dir/oona.test" -test.run '^$' -test.bench "^BenchmarkPublisherRedis\$/^$sub\$" \
			-test.benchtime "${N}x" | awk '/signals\/s/ { for (i = 1; i < NF; i++) if ($(i+1) == "signals/s") print $i }')
		best_go[$sub]=$(python3 -c "print(max(float('${best_go[$sub]}'), float('$rate')))")
	done
done

python3 - "$best_rb" "${best_go[health_signal]}" "${best_go[message]}" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import sys
rb, fast, generic = map(float, sys.argv[1:4])
print(f"load average                        : {sys.argv[4]}")
print(f"redis-benchmark XADD (-c 1 -P 256)  : {rb:12.0f} entries/s")
print(f"publisher, health signal (runtime) : {fast:12.0f} signals/s  {100 * fast / rb:5.1f} %  (target >= 60 %)")
print(f"publisher, Publish (built messages) : {generic:12.0f} signals/s  {100 * generic / rb:5.1f} %")
PY
