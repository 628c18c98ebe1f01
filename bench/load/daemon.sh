# Shared by bench/load/run.sh, bench/soak/run.sh and bench/run.sh (source it):
# builds kasmina-host, starts `serve` on a free loopback port with the
# embedded example kernels (or KERNELS_DIR), writes a wrk Lua script that
# POSTs a valid JSON inference request to every loaded kernel in turn, and
# reads the daemon's resource use. Needs go, curl, python3 and wrk.
#
# After kh_start: $KH_PID, $KH_URL, $KH_TMP (removed by kh_stop).

kh_need() {
	local b
	for b in "$@"; do
		command -v "$b" >/dev/null || { echo "missing $b (apt-get install -y --no-install-recommends $b)" >&2; exit 1; }
	done
}

kh_free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# kh_start [extra serve flags...]
kh_start() {
	KH_TMP=$(mktemp -d)
	(cd "$KH_ROOT" && go build -o "$KH_TMP/kasmina-host" ./cmd/kasmina-host)
	local port
	port=$(kh_free_port)
	KH_URL="http://127.0.0.1:$port"
	local args=(serve --addr "127.0.0.1:$port" --bus-file "$KH_TMP/bus.jsonl" --log-level warn)
	[[ -n "${KERNELS_DIR:-}" ]] && args+=(--kernels "$KERNELS_DIR")
	"$KH_TMP/kasmina-host" "${args[@]}" "$@" 2>"$KH_TMP/daemon.log" &
	KH_PID=$!
	local i
	for i in $(seq 200); do
		curl -fsS "$KH_URL/v2/health/ready" >/dev/null 2>&1 && return 0
		kill -0 "$KH_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "kasmina-host did not become ready:" >&2
	cat "$KH_TMP/daemon.log" >&2
	exit 1
}

kh_stop() {
	if [[ -n "${KH_PID:-}" ]] && kill -0 "$KH_PID" 2>/dev/null; then
		kill -TERM "$KH_PID"
		wait "$KH_PID" 2>/dev/null || true
	fi
	[[ -n "${KH_TMP:-}" ]] && rm -rf "$KH_TMP"
	KH_PID=
}

# kh_wrk_script FILE [KERNEL...]: a wrk script cycling over every loaded
# kernel (or only those named) with a batch-1 JSON request, counting 5xx answers per thread and printing one
# JSON line of results in done().
kh_wrk_script() {
	local file=$1
	shift
	curl -fsS "$KH_URL/v1/kernels" | python3 -c '
import json, sys
ks = json.load(sys.stdin)["kernels"]
only = set(sys.argv[1:])
ks = [k for k in ks if not only or k["name"] in only]
if not ks:
    sys.exit("no kernel to request: " + " ".join(sorted(only)))
reqs = []
for k in sorted(ks, key=lambda k: k["name"]):
    n = 1
    for s in k["input_shape"]:
        n *= s
    data = [round((i % 7) / 7 - 0.4, 4) for i in range(n)]
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1] + k["input_shape"], "data": data}]})
    reqs.append((k["name"], body))
print("local bodies = {")
for name, body in reqs:
    print("  {%s, %s}," % (json.dumps("/v2/models/" + name + "/infer"), json.dumps(body)))
print("}")
print("""
local threads = {}
function setup(thread) table.insert(threads, thread) end
local reqs, i = {}, 0
c5xx, c4xx = 0, 0 -- globals: done() reads them per thread with thread:get
function init(args)
  for _, b in ipairs(bodies) do
    table.insert(reqs, wrk.format("POST", b[1], {["Content-Type"] = "application/json"}, b[2]))
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function response(status, headers, body)
  if status >= 500 then c5xx = c5xx + 1 elseif status >= 400 then c4xx = c4xx + 1 end
end
function done(summary, latency, requests)
  local s5, s4 = 0, 0
  for _, t in ipairs(threads) do s5 = s5 + (t:get("c5xx") or 0); s4 = s4 + (t:get("c4xx") or 0) end
  local e = summary.errors
  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_s\\": %.3f, \\"rps\\": %.1f, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d, \\"status_5xx\\": %d, \\"status_4xx\\": %d, \\"connect_errors\\": %d, \\"read_errors\\": %d, \\"write_errors\\": %d, \\"timeouts\\": %d, \\"kernels\\": %d}\\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    s5, s4, e.connect, e.read, e.write, e.timeout, #bodies))
end""")
' "$@" >"$file"
}

# kh_proc FIELD: a field of /proc/PID/status in KiB (VmRSS, VmHWM).
kh_proc() {
	awk -v f="$1:" '$1 == f { print $2 }' "/proc/$KH_PID/status"
}

kh_fds() { ls "/proc/$KH_PID/fd" | wc -l; }

# kh_metric NAME: the sum of a metric's series on /metrics.
kh_metric() {
	curl -fsS "$KH_URL/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }'
}
