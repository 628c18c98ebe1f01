#!/usr/bin/env bash
# Red team (issue #12): replays the issue's attacks against the real
# kasmina-host binary, built here with `go build`, each daemon started under
# `ulimit -v` (3 GiB, as in the outside test that found the crashes; the
# race-built daemon of attack 23 excepted: the race detector maps terabytes
# of shadow memory). Loopback only: one redis-server for the bus, one Python
# http.server for artifacts that must be missing or slow
# (bench/redteam/redteam.py, which also holds the attack clients).
#
# Prints `PASS name: what was seen` or `FAIL name: why` per attack, then
#     redteam: P passed, F failed
# and exits 0 only when F is 0. Every process and temporary file is removed
# on exit, Ctrl-C included. About 70 s on 2 busy cores with a warm build
# cache; from cold, the -race build of attack 23 (about 2 minutes here) runs
# beside the other attacks, for about 3-4 minutes in all.
#
#   bench/redteam/run.sh              # every attack
#   ONLY='01|13' bench/redteam/run.sh # attacks whose name matches (grep -E)
#   KEEP=1                            # keep the temporary directory (logs)
#   PYTHON=python3                    # the Python for the clients (default /usr/bin/python3)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY=${PYTHON:-/usr/bin/python3}
[[ -x $PY ]] || PY=python3
RT="$ROOT/bench/redteam/redteam.py"
ONLY=${ONLY:-}
ULIMIT_KB=$((3 * 1024 * 1024))
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kasmina-redteam.XXXXXX")
PIDS=()  # every background process started here, ended by cleanup
CHILD=    # the command run_fg is waiting for
PASSED=0
FAILED=0
START=$SECONDS

# ours PID: PID is still a child of this script (not a reused PID).
ours() { [[ $(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ') == "$$" ]]; }

cleanup() {
	local pid live=()
	trap - EXIT INT TERM
	for pid in $CHILD "${PIDS[@]}"; do
		ours "$pid" && live+=("$pid")
	done
	# The -race build runs in its own process group (go and its compilers).
	[[ -n ${RACE_BUILD:-} ]] && ours "$RACE_BUILD" && kill -TERM -- "-$RACE_BUILD" 2>/dev/null
	for pid in "${live[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${live[@]}"; do
		for _ in $(seq 50); do
			ours "$pid" || break
			sleep 0.1
		done
		ours "$pid" && kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [[ -n ${KEEP:-} ]]; then
		echo "redteam: logs kept in $TMP" >&2
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'echo "redteam: interrupted" >&2; exit 130' INT TERM

for b in go "$PY" redis-server curl mkfifo timeout; do
	command -v "$b" >/dev/null || { echo "redteam: missing $b" >&2; exit 1; }
done

# run_fg CMD...: runs CMD in the background and waits for it, so that Ctrl-C
# (the INT trap) acts at once instead of after CMD ends.
run_fg() {
	"$@" &
	CHILD=$!
	wait "$CHILD"
	local rc=$?
	CHILD=
	return $rc
}

# selected NAME...: whether ONLY selects any of the attacks named.
selected() { [[ -z $ONLY ]] || printf '%s\n' "$@" | grep -Eq "$ONLY"; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- building and starting ---------------------------------------------------

BIN=$TMP/kasmina-host
RACE_BIN=$TMP/kasmina-host-race
echo "redteam: building kasmina-host (and, beside the attacks, a -race build for attack 23)" >&2
run_fg go -C "$ROOT" build -o "$BIN" ./cmd/kasmina-host || { echo "redteam: go build failed" >&2; exit 1; }
if selected 23-race-infer-unload; then
	setsid -w go -C "$ROOT" build -race -o "$RACE_BIN" ./cmd/kasmina-host >"$TMP/race-build.log" 2>&1 &
	RACE_BUILD=$!
	PIDS+=("$RACE_BUILD")
fi

# start NAME [serve flags...]: starts `serve` on a free loopback port under
# ulimit -v (unless NO_ULIMIT=1), from directory CWD (default $TMP), with
# binary SERVE_BIN (default $BIN), and waits up to 30 s for readiness. Sets
# NAME_PID, NAME_URL, NAME_LOG (stderr). Returns 1 if it did not become ready.
start() {
	local name=$1 port pid
	shift
	port=$(free_port)
	local log=$TMP/$name.log
	(
		cd "${CWD:-$TMP}" || exit 1
		[[ -n ${NO_ULIMIT:-} ]] || ulimit -v "$ULIMIT_KB"
		exec "${SERVE_BIN:-$BIN}" serve --addr "127.0.0.1:$port" --grpc-addr "" --host-id "rt-$name" --exit-timeout 10s \
			--log-format text "$@"
	) >"$TMP/$name.out" 2>"$log" &
	pid=$!
	PIDS+=("$pid")
	printf -v "${name}_PID" %s "$pid"
	printf -v "${name}_URL" %s "http://127.0.0.1:$port"
	printf -v "${name}_LOG" %s "$log"
	for _ in $(seq 300); do
		curl -fsS -m 2 "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "daemon $name did not become ready; its log:"
	tail -20 "$log"
	echo "fail: daemon $name did not become ready within 30 s: $(tail -1 "$log")"
	return 1
}

# stop NAME [LIMIT]: SIGTERM, wait up to LIMIT s (default 20). Sets STOP_RC
# (124 when it had to be killed) and STOP_SECS.
stop() {
	local pid_var=${1}_PID
	local pid=${!pid_var} limit=${2:-20} t0=$SECONDS
	STOP_RC=124
	if ! ours "$pid"; then
		wait "$pid" 2>/dev/null
		STOP_RC=$?
		STOP_SECS=0
		return
	fi
	kill -TERM "$pid"
	for _ in $(seq $((limit * 10))); do
		if ! ours "$pid"; then
			wait "$pid" 2>/dev/null
			STOP_RC=$?
			break
		fi
		sleep 0.1
	done
	if [[ $STOP_RC == 124 ]]; then
		kill -KILL "$pid"
		wait "$pid" 2>/dev/null
	fi
	STOP_SECS=$((SECONDS - t0))
}

# run_serve SECONDS OUTFILE [serve flags...]: a daemon expected to refuse to
# start; sets RUN_RC (124 when it had to be stopped).
run_serve() {
	local limit=$1 out=$2
	shift 2
	run_fg run_serve_limited "$limit" "$@" >"$out" 2>&1
	RUN_RC=$?
}

run_serve_limited() {
	local limit=$1
	shift
	cd "$TMP" || exit 1
	ulimit -v "$ULIMIT_KB"
	exec timeout -k 2 "$limit" "$BIN" serve --host-id rt-run --grpc-addr "" --bus-file /dev/null "$@"
}

# --- reporting ---------------------------------------------------------------

# attack NAME FUNCTION [ARGS...]: runs one attack (its output goes to
# $TMP/attack-NAME.log) and prints PASS or FAIL with its last ok:/fail: line.
attack() {
	local name=$1
	shift
	selected "$name" || return 0
	local log=$TMP/attack-$name.log rc line t0=$SECONDS
	"$@" >"$log" 2>&1
	rc=$?
	line=$(grep -E '^(ok|fail): ' "$log" | tail -1)
	if [[ $rc == 0 && $line == ok:* ]]; then
		PASSED=$((PASSED + 1))
		echo "PASS $name: ${line#ok: } ($((SECONDS - t0)) s)"
	else
		FAILED=$((FAILED + 1))
		[[ -n $line ]] || line="fail: exit $rc, no verdict; last lines: $(tail -3 "$log" | tr '\n' ' ')"
		echo "FAIL $name: ${line#fail: }"
	fi
}

ok() { echo "ok: $*"; }
bad() { echo "fail: $*"; return 1; }

# py ATTACK [ARGS...]: a Python attack client, bounded at 240 s.
py() { run_fg timeout -k 5 240 "$PY" "$RT" "$@"; }

# log_clean NAME: the daemon's log has no panic, fatal error or race report.
log_clean() {
	local v=${1}_LOG
	! grep -Eq 'panic:|fatal error:|DATA RACE|SIGSEGV' "${!v}"
}

# --- fixtures ----------------------------------------------------------------

K=$TMP/kernels     # the kernel root: every attack's artifacts
KS=$TMP/serve      # --kernels of the main daemon
KF=$TMP/fifo       # --kernels of the start-up attack: a kernel and a pipe
ART=$TMP/artifacts # what the artifact server serves
mkdir -p "$K/sub/dir" "$KS" "$KF" "$ART" "$TMP/outside" "$TMP/redis"
"$PY" "$RT" kernels "$K" >/dev/null || { echo "redteam: writing the kernels failed" >&2; exit 1; }
cp "$K/k12a.safetensors" "$K/sub/dir/"
cp "$K/k12b.safetensors" "$K/sub/"
mv "$K/outside-k.safetensors" "$TMP/outside/"
ln -s ../outside/outside-k.safetensors "$K/escape.safetensors"
ln -s ../outside/outside-k.safetensors "$KS/escape.safetensors"
cp "$K/busy.safetensors" "$K/tiny-huge.safetensors" "$K/fifo-ok.safetensors" "$KS/"
cp "$K/fifo-ok.safetensors" "$KF/"
cp "$K"/*.safetensors "$ART/"
mkfifo "$K/pipe.safetensors" "$KS/pipe.safetensors" "$KF/pipe.safetensors" # after the copies: cp would block on them
printf 'root:x:0:0:a fake passwd line that goes on and on:/root:/bin/bash\nSECRET-TAIL\n' >"$K/notakernel.safetensors"

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP/redis" --loglevel warning \
	>"$TMP/redis.log" 2>&1 &
PIDS+=($!)
"$PY" "$RT" artifacts "$ART" "$TMP/art.port" 2>"$TMP/artifacts.log" &
PIDS+=($!)
for _ in $(seq 100); do
	[[ -s $TMP/art.port ]] && redis-cli -p "$RP" ping 2>/dev/null | grep -q PONG && break
	sleep 0.1
done
AP=$(cat "$TMP/art.port" 2>/dev/null) || { echo "redteam: the artifact server did not start" >&2; exit 1; }
redis-cli -p "$RP" ping 2>/dev/null | grep -q PONG || { echo "redteam: redis-server did not start" >&2; exit 1; }
"$PY" "$RT" urza "$ART" "$AP"
TOKEN=rt-$RANDOM$RANDOM-token
printf '%s\n' "$TOKEN" >"$TMP/token"
echo "redteam: fixtures in $TMP; redis on $RP, artifacts on $AP" >&2

# --- the main daemon (A): open, on Redis db 0, one executor -----------------

A_FLAGS=(--kernels "$KS" --kernel-root "$K" --oona "redis://127.0.0.1:$RP/0" --allow-loopback-refs --urza "http://127.0.0.1:$AP"
	--simulate dgxa100 --body-budget-bytes $((64 << 20)) --body-read-timeout 3s --concurrency 1 --command-timeout 30s)
if ! start A "${A_FLAGS[@]}"; then
	echo "FAIL setup: the main daemon did not start"
	echo "redteam: 0 passed, 1 failed"
	exit 1
fi
A_ARGS=(--url "$A_URL" --pid "$A_PID" --kdir "$K" --art-port "$AP" --redis-port "$RP" --redis-db 0)

# The layer the bus attacks send commands for, and a consumer that reads them.
if ! py setup "${A_ARGS[@]}" >"$TMP/setup.log" 2>&1; then
	FAILED=$((FAILED + 1))
	echo "FAIL 00-setup: $(tail -1 "$TMP/setup.log")"
fi

attack 01-body-flood-open py body-flood "${A_ARGS[@]}" --read-timeout 3 --budget-phase

# 16 runs beside the others (after 01, which counts the body bytes held): its artifact takes 58 s, the load deadline is 45 s.
if selected 16-load-deadline; then
	py load-deadline "${A_ARGS[@]}" --slow 58 >"$TMP/load-deadline.out" 2>&1 &
	DEADLINE_PID=$!
	PIDS+=("$DEADLINE_PID")
fi

attack 02-output-bound py outputs "${A_ARGS[@]}"
attack 03-fifo-behind-refs py fifo-refs "${A_ARGS[@]}"
attack 09-metrics-host py metrics-host "${A_ARGS[@]}"
attack 10-quoted-prefix py quote "${A_ARGS[@]}"
attack 11-symlink-out py symlink "${A_ARGS[@]}"
attack 12-slash-artifact-id py slash-ids "${A_ARGS[@]}"
attack 13-permanent-errors py classify "${A_ARGS[@]}"
attack 14-slow-artifact-one-seed py slow-seed "${A_ARGS[@]}" --slow 12
attack 15-empty-event-id py empty-event-id "${A_ARGS[@]}"
attack 17-same-document-twice py repeats "${A_ARGS[@]}"
attack 18-messages-once py messages "${A_ARGS[@]}"
attack 20-disconnects py disconnects "${A_ARGS[@]}"
attack 22-series-deleted py series "${A_ARGS[@]}"

failed_loads() {
	start G --kernel-root "$K" --no-examples --bus-file "$TMP/G.bus" || return 1
	py failed-loads --url "$G_URL" --pid "$G_PID" --kdir "$K"
}
attack 21-failed-loads-bounded failed_loads

# --- the token daemon (B): token, reads open, Redis db 1 ---------------------

token_daemon() {
	start B --kernel-root "$K" --no-examples --auth-token-file "$TMP/token" --oona "redis://127.0.0.1:$RP/1" \
		--allow-loopback-refs --body-budget-bytes $((64 << 20)) --body-read-timeout 3s || return 1
}
token_daemon_ok=0
if selected 01-body-flood-token 08-credentials-redacted; then
	token_daemon && token_daemon_ok=1
fi
B_ARGS=(--url "${B_URL:-}" --pid "${B_PID:-0}" --token "$TOKEN" --kdir "$K" --art-port "$AP" --redis-port "$RP" --redis-db 1)
need_b() { [[ $token_daemon_ok == 1 ]] || bad "the token daemon did not start"; }
flood_b() { need_b && py body-flood "${B_ARGS[@]}" --read-timeout 3; }
redact_b() {
	need_b || return 1
	py redact "${B_ARGS[@]}" >"$TMP/redact.out"
	local rc=$?
	cat "$TMP/redact.out"
	[[ $rc == 0 ]] || return 1
	if grep -Eq 'AKIAREDTEAMCRED|5ec7e75ec7e75ec7|pa55REDTEAM' "$B_LOG"; then
		bad "the daemon's log shows a credential: $(grep -Eo '.{60}(AKIAREDTEAMCRED|5ec7e75ec7e75ec7|pa55REDTEAM).{20}' "$B_LOG" | head -1)"
		return 1
	fi
	ok "$(sed -n 's/^ok: //p' "$TMP/redact.out") or the daemon's $(wc -l <"$B_LOG") log lines"
}
attack 01-body-flood-token flood_b
attack 08-credentials-redacted redact_b

auth_read() {
	start B2 --auth-token-file "$TMP/token" --auth-read --bus-file "$TMP/B2.bus" || return 1
	py auth-read --url "$B2_URL" --token "$TOKEN" || return 1
}
attack 08-auth-read auth_read

# --- no kernel root (C), started from / --------------------------------------

no_root() {
	CWD=/ start C --no-examples --oona "redis://127.0.0.1:$RP/2" --allow-loopback-refs || return 1
	py no-root --url "$C_URL" --kdir "$K" --art-port "$AP" --redis-port "$RP" --redis-db 2
}
attack 10-no-kernel-root no_root

# --- state directory (D, E) --------------------------------------------------

state_unwritable() {
	local sd=$TMP/state-d
	mkdir -p "$sd"
	start D --state-dir "$sd" --kernel-root "$K" --no-examples --bus-file "$TMP/D.bus" || return 1
	py state-break --url "$D_URL" --kdir "$K" --state-dir "$sd" || return 1
	kill -KILL "$D_PID"
	wait "$D_PID" 2>/dev/null
	start D2 --state-dir "$sd" --kernel-root "$K" --no-examples --bus-file "$TMP/D2.bus" || return 1
	py state-after-kill --url "$D2_URL" --kdir "$K"
}
attack 04-state-dir-unwritable state_unwritable

newer_state() {
	local sd=$TMP/state-5 before after
	mkdir -p "$sd"
	printf '{"version":99,"saved_at":"2030-01-01T00:00:00Z","kernels":[{"name":"from-the-future"}]}\n' >"$sd/state.json"
	before=$(sha256sum "$sd/state.json" | cut -c1-64)
	run_serve 20 "$TMP/newer-state.out" --addr "127.0.0.1:$(free_port)" --state-dir "$sd"
	after=$(sha256sum "$sd/state.json" | cut -c1-64)
	cat "$TMP/newer-state.out"
	[[ $RUN_RC == 2 ]] || { bad "exit $RUN_RC, want 2"; return 1; }
	grep -q "$sd/state.json" "$TMP/newer-state.out" && grep -q 99 "$TMP/newer-state.out" ||
		{ bad "the message does not name the file and its version"; return 1; }
	[[ $before == "$after" ]] || { bad "the state file was changed"; return 1; }
	# Nothing written beside it (an empty artifacts/ directory is tolerated).
	local files
	files=$(cd "$sd" && find . -mindepth 1 ! -path ./artifacts | sort | tr '\n' ' ')
	[[ $files == "./state.json " ]] || { bad "the state directory changed: $files"; return 1; }
	ok "exit 2 naming $(grep -o 'version 99[^;]*' "$TMP/newer-state.out" | head -1); file untouched"
}
attack 05-newer-state-file newer_state

damaged_artifact() {
	local sd=$TMP/state-e sha art
	mkdir -p "$sd"
	start E --state-dir "$sd" --bus-file "$TMP/E.bus" || return 1
	sha=$(curl -fsS "$E_URL/v1/kernels/seed-linear-64" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["sha256"])')
	stop E
	art=$sd/artifacts/$sha.kernel
	[[ -f $art ]] || { bad "no stored artifact $art"; return 1; }
	"$PY" -c 'import sys; p=sys.argv[1]; b=bytearray(open(p,"rb").read()); b[-1]^=1; open(p,"wb").write(b)' "$art"
	start E2 --state-dir "$sd" --no-examples --bus-file "$TMP/E2.bus" || return 1
	py damaged --url "$E2_URL"
}
attack 06-flipped-byte-restored damaged_artifact

# --- exposure: tokens, listening beyond loopback -----------------------------

tokens() {
	local port out=$TMP/tokens.out holder
	port=$(free_port)
	run_serve 20 "$out" --addr "127.0.0.1:$port" --auth-token ' '
	[[ $RUN_RC == 2 ]] && grep -q -- --auth-token "$out" || { bad "--auth-token ' ': exit $RUN_RC: $(tail -1 "$out")"; return 1; }
	KASMINA_AUTH_TOKEN=$'  \t' run_serve 20 "$out" --addr "127.0.0.1:$port"
	[[ $RUN_RC == 2 ]] && grep -q KASMINA_AUTH_TOKEN "$out" || { bad "KASMINA_AUTH_TOKEN blank: exit $RUN_RC: $(tail -1 "$out")"; return 1; }
	printf ' \n\t\n' >"$TMP/blank-token"
	run_serve 20 "$out" --addr "127.0.0.1:$port" --auth-token-file "$TMP/blank-token"
	[[ $RUN_RC == 2 ]] || { bad "a blank token file: exit $RUN_RC: $(tail -1 "$out")"; return 1; }
	# Beyond loopback without a token: refused before listening.
	run_serve 20 "$out" --addr "0.0.0.0:$port" --no-examples
	[[ $RUN_RC == 2 ]] || { bad "0.0.0.0 without a token: exit $RUN_RC: $(tail -1 "$out")"; return 1; }
	# With --insecure-no-auth: a WARN line. The port is held on 127.0.0.1 so
	# that the daemon cannot listen beyond loopback even for a moment.
	"$PY" -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(); time.sleep(30)' "$port" &
	holder=$!
	PIDS+=("$holder")
	sleep 0.3
	run_serve 20 "$out" --addr "0.0.0.0:$port" --insecure-no-auth --no-examples
	kill "$holder" 2>/dev/null
	cat "$out"
	grep -E 'level=WARN.*SERVING WITHOUT AUTHENTICATION' "$out" | grep -q "0.0.0.0:$port" ||
		{ bad "no WARN line about serving without authentication (exit $RUN_RC)"; return 1; }
	ok "blank token refused (flag, env, file: exit 2), 0.0.0.0 without a token exit 2, --insecure-no-auth warns"
}
attack 07-blank-token-and-warning tokens

# --- named pipes at start-up (F) ---------------------------------------------

fifo_startup() {
	local t0
	start F --kernels "$KF" --bus-file "$TMP/F.bus" --exit-timeout 5s || return 1
	py fifo-index --url "$F_URL" || return 1
	stop F 20
	[[ $STOP_RC == 0 && $STOP_SECS -le 7 ]] || { bad "SIGTERM after start-up: exit $STOP_RC after $STOP_SECS s (exit timeout 5 s)"; return 1; }
	# SIGTERM as soon as the daemon has logged its start (its signal
	# handler is in place), while it scans the directory with the pipe.
	(
		cd "$TMP" || exit 1
		ulimit -v "$ULIMIT_KB"
		exec "$BIN" serve --addr "127.0.0.1:$(free_port)" --kernels "$KF" --bus-file /dev/null --exit-timeout 5s
	) >/dev/null 2>"$TMP/F2.log" &
	F2_PID=$!
	PIDS+=("$F2_PID")
	for _ in $(seq 200); do
		grep -q 'kasmina-host starting' "$TMP/F2.log" && break
		sleep 0.05
	done
	stop F2 20
	[[ $STOP_RC == 0 && $STOP_SECS -le 7 ]] || { bad "SIGTERM during start-up: exit $STOP_RC after $STOP_SECS s"; return 1; }
	# A token file and a state file that are pipes.
	mkfifo "$TMP/token.fifo"
	run_serve 20 "$TMP/fifo-token.out" --addr "127.0.0.1:$(free_port)" --auth-token-file "$TMP/token.fifo"
	[[ $RUN_RC == 2 ]] && grep -q 'named pipe' "$TMP/fifo-token.out" || { bad "a token file that is a pipe: exit $RUN_RC"; return 1; }
	mkdir -p "$TMP/state-fifo" && mkfifo "$TMP/state-fifo/state.json"
	run_serve 20 "$TMP/fifo-state.out" --addr "127.0.0.1:$(free_port)" --state-dir "$TMP/state-fifo"
	[[ $RUN_RC == 2 ]] && grep -q 'named pipe' "$TMP/fifo-state.out" || { bad "a state file that is a pipe: exit $RUN_RC"; return 1; }
	ok "start-up completes beside a pipe; SIGTERM ends it (after start-up and during it) within the 5 s exit timeout; pipes as token and state files: exit 2"
}
attack 03-fifo-among-kernels fifo_startup

# --- placement on a MIG node -------------------------------------------------

place_mig() {
	"$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
d["metadata"]["device_requirements"] = ["cuda:1"]
json.dump(d, open(sys.argv[2], "w"))' "$ROOT/kernels/examples/mlp-gelu.json" "$TMP/cuda1.json"
	run_fg timeout 30 "$BIN" place --kernel "$TMP/cuda1.json" --simulate dgxa100-mig --json >"$TMP/place.json" 2>"$TMP/place.err"
	local rc=$?
	cat "$TMP/place.json" "$TMP/place.err"
	[[ $rc == 0 ]] || { bad "place: exit $rc"; return 1; }
	"$PY" -c '
import json, sys
p = json.load(open(sys.argv[1]))
if p.get("device") != "cuda:1" or p.get("degraded"):
    print("fail: device %r degraded %r, want cuda:1: %s" % (p.get("device"), p.get("degraded"), p.get("reason")))
    sys.exit(1)
print("ok: device cuda:1 (%s)" % p.get("uuid"))' "$TMP/place.json"
}
attack 19-mig-cuda1 place_mig

# --- the race detector (R) ---------------------------------------------------

race() {
	local i
	for i in $(seq 3000); do
		kill -0 "$RACE_BUILD" 2>/dev/null || break
		sleep 0.1
	done
	wait "$RACE_BUILD" || { bad "go build -race failed: $(tail -3 "$TMP/race-build.log" | tr '\n' ' ')"; return 1; }
	NO_ULIMIT=1 SERVE_BIN=$RACE_BIN start R --kernel-root "$K" --no-examples --bus-file "$TMP/R.bus" || return 1
	py race --url "$R_URL" --kdir "$K" --seconds 8 >"$TMP/race.out"
	local rc=$? seen
	cat "$TMP/race.out"
	[[ $rc == 0 ]] || return 1
	seen=$(sed -n 's/^ok: //p' "$TMP/race.out")
	stop R 30
	if grep -q 'DATA RACE' "$R_LOG"; then
		grep -A12 'DATA RACE' "$R_LOG" | head -30
		bad "the race detector reported $(grep -c 'DATA RACE' "$R_LOG") data race(s); see above"
		return 1
	fi
	[[ $STOP_RC == 0 ]] || { bad "the race-built daemon exited $STOP_RC (66: race found)"; return 1; }
	ok "$seen; no DATA RACE in the race-built daemon's log, exit 0"
}
attack 23-race-infer-unload race

# 16's answer (it ran beside everything since 01).
load_deadline() {
	local i
	for i in $(seq 900); do
		kill -0 "$DEADLINE_PID" 2>/dev/null || break
		sleep 0.1
	done
	wait "$DEADLINE_PID"
	local rc=$?
	cat "$TMP/load-deadline.out"
	return $rc
}
[[ -n ${DEADLINE_PID:-} ]] && attack 16-load-deadline load_deadline

# --- every daemon still up exits cleanly, and no daemon logged a crash ------

daemons_clean() {
	local n msg=""
	for n in A G B B2 C D2 E2; do
		local v=${n}_PID
		[[ -n ${!v:-} ]] || continue
		if ! kill -0 "${!v}" 2>/dev/null; then
			msg+="$n died during the run; "
			continue
		fi
		stop "$n" 20
		[[ $STOP_RC == 0 ]] || msg+="$n exited $STOP_RC after SIGTERM; "
		log_clean "$n" || msg+="$n logged: $(grep -Em1 'panic:|fatal error:|DATA RACE|SIGSEGV' "$TMP/$n.log"); "
	done
	[[ -z $msg ]] || { bad "$msg"; return 1; }
	ok "every daemon alive at the end and exited 0 on SIGTERM, no panic or fatal error logged"
}
attack 99-daemons-exit-clean daemons_clean

echo "redteam: $PASSED passed, $FAILED failed"
echo "redteam: wall time $((SECONDS - START)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
[[ $FAILED == 0 ]]
