#!/usr/bin/env bash
# Health signals per second through the Kasmina host's Oona publisher
# against a local redis-server, side by side with redis-benchmark doing XADD
# of an entry the size of one health message on one connection with -P equal
# to the publisher's batch size. Prints both rates and the ratio (target
# >= 80%). Usage: bench/oona/run.sh [N] (default 200000 messages).
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

best_rb=0
for _ in $(seq "$ROUNDS"); do
	redis-cli -p "$port" del telemetry.seed.health >/dev/null
	rps=$(redis-benchmark -p "$port" -c 1 -P "$BATCH" -n "$N" -q --csv \
		XADD telemetry.seed.health MAXLEN '~' 100000 '*' "${fields[@]}" |
		python3 -c 'import sys; print(sys.stdin.read().strip().splitlines()[-1].rsplit(",", 7)[1].strip("\""))')
	best_rb=$(python3 -c "print(max(float('$best_rb'), float('$rps')))")
done
redis-cli -p "$port" del telemetry.seed.health >/dev/null

go test -c -o "$dir/oona.test" ./runtime/oona
best_go=0
for _ in $(seq "$ROUNDS"); do
	rate=$(OONA_BENCH_REDIS="127.0.0.1:$port" "$dir/oona.test" -test.run '^$' -test.bench '^BenchmarkPublisherRedis$' \
		-test.benchtime "${N}x" | awk '/signals\/s/ { for (i = 1; i < NF; i++) if ($(i+1) == "signals/s") print $i }')
	best_go=$(python3 -c "print(max(float('$best_go'), float('$rate')))")
done

python3 - "$best_rb" "$best_go" <<'PY'
import sys
rb, go = float(sys.argv[1]), float(sys.argv[2])
print(f"redis-benchmark XADD (-c 1 -P 256): {rb:12.0f} entries/s")
print(f"kasmina publisher               : {go:12.0f} signals/s")
print(f"ratio                           : {100 * go / rb:11.1f} %  (target >= 80 %)")
PY
