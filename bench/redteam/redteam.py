#!/usr/bin/env python3
"""Attack clients for bench/redteam/run.sh (issue #12), standard library only.

    redteam.py kernels DIR                 write the attack kernels and their documents
    redteam.py artifacts DIR PORTFILE      the artifact server (404s, slow answers, a fake Urza)
    redteam.py urza DIR PORT               write the fake Urza's records into DIR
    redteam.py ATTACK --url URL [...]      one attack against a running daemon

An attack prints what it saw, then "ok: SUMMARY" and exits 0, or
"fail: WHY" and exits 1. Every socket has a timeout and every loop a bound
in count and time: a daemon that hangs fails the attack, never the run.
"""

import argparse
import hashlib
import http.client
import http.server
import json
import os
import re
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone

MiB = 1 << 20


class Fail(Exception):
    """The attack succeeded against the daemon (or could not be judged)."""


def need(cond, why):
    if not cond:
        raise Fail(why)


def say(*a):
    print(*a, flush=True)


# --- kernels ------------------------------------------------------------------


def safetensors(tensors, metadata):
    """An esper-kernel/v1 file: tensors is [(name, shape, float32 bytes)]."""
    header = {"__metadata__": metadata}
    off = 0
    for name, shape, data in tensors:
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(d for _, _, d in tensors)


def kernel_metadata(kid, inp, out, params, footprint=1.0, checksum=None):
    return {
        "kernel_id": kid, "blueprint_id": "bp-" + kid, "name": "red team kernel " + kid,
        "input_shape": inp, "output_shape": out, "parameter_count": params,
        "device_requirements": ["cuda", "cpu"], "memory_footprint_mb": footprint,
        "compilation_target": "esper-kernel/v1", "optimization_flags": {}, "performance_profile": {},
        "compatibility_version": "1.0", "created_at": "2026-11-25T00:00:00Z", "checksum": checksum,
    }


def kernel_file(kid, module, tensors, inp, out, params, footprint=1.0):
    md = {
        "format": "esper-kernel/v1",
        "esper.module": json.dumps(module, separators=(",", ":")),
        "esper.kernel_metadata": json.dumps(kernel_metadata(kid, inp, out, params, footprint)),
    }
    return safetensors(tensors, md)


def f32(n, value=0.0):
    return struct.pack("<f", value) * n


def linear_kernel(kid, n=4, fill=0.01):
    """Linear(n→n) with bias: a few hundred bytes."""
    mod = {"type": "sequential", "layers": [{"type": "linear", "in_features": n, "out_features": n}]}
    return kernel_file(kid, mod, [("0.weight", [n, n], f32(n * n, fill)), ("0.bias", [n], f32(n, fill))],
                       [n], [n], n * n + n)


def tiny_huge_kernel(kid, pad=255):
    """A 1×1 convolution of one pixel with padding: two parameters, a file
    under 1 KiB, and (2·pad+1)² output elements per sample (261,121 at
    pad 255: 1 MiB a sample, 4 GiB at batch 4096)."""
    side = 2 * pad + 1
    mod = {"type": "sequential", "layers": [{"type": "conv2d", "in_channels": 1, "out_channels": 1,
                                             "kernel_size": 1, "padding": pad}]}
    return kernel_file(kid, mod, [("0.weight", [1, 1, 1, 1], f32(1, 1.0)), ("0.bias", [1], f32(1, 0.5))],
                       [1, 1, 1], [1, side, side], 2)


def busy_kernel(kid, n=1024):
    """Linear(n→n) without bias: batch 4096 is 8.6 GFLOP, a few hundred ms."""
    mod = {"type": "sequential", "layers": [{"type": "linear", "in_features": n, "out_features": n, "bias": False}]}
    return kernel_file(kid, mod, [("0.weight", [n, n], f32(n * n, 0.001))], [n], [n], n * n, footprint=4.0)


def document(kid, ref, data, inp, out, params):
    """A CompiledKernel document for data, whose artifact is at ref."""
    return {
        "kernel_id": kid, "blueprint_id": "bp-" + kid, "binary_ref": ref,
        "metadata": kernel_metadata(kid, inp, out, params, checksum=hashlib.sha256(data).hexdigest()),
        "status": "validated", "validation_results": {}, "deployment_stats": {},
        "created_at": "2026-11-25T00:00:00Z", "last_used_at": None,
    }


def cmd_kernels(args):
    """Writes DIR/<name>.safetensors and DIR/<name>.json (its document,
    binary_ref = the file name) for every attack kernel."""
    os.makedirs(args.dir, exist_ok=True)
    made = {}
    for kid in ["anchor", "k12a", "k12b", "k12c", "k14slow", "k14fast", "k15a", "k15b", "k17", "k8", "cycle",
                "race", "fifo-ok", "outside-k", "state-kept", "state-refused", "state-after", "noroot"]:
        made[kid] = (linear_kernel(kid), [4], [4], 20)
    made["k17-other"] = (linear_kernel("k17", fill=0.5), [4], [4], 20)  # same kernel_id, other weights
    made["tiny-huge"] = (tiny_huge_kernel("tiny-huge"), [1, 1, 1], [1, 511, 511], 2)
    made["busy"] = (busy_kernel("busy"), [1024], [1024], 1024 * 1024)
    for name, (data, inp, out, params) in made.items():
        with open(os.path.join(args.dir, name + ".safetensors"), "wb") as f:
            f.write(data)
        kid = "k17" if name == "k17-other" else name
        doc = document(kid, name + ".safetensors", data, inp, out, params)
        if name == "cycle":
            # A GPU the node does not have: the kernel falls back to the CPU
            # and gets a kasmina_fallbacks_total series (attack 22).
            doc["metadata"]["device_requirements"] = ["cuda:9"]
        with open(os.path.join(args.dir, name + ".json"), "w") as f:
            json.dump(doc, f)
    say("wrote %d kernels to %s (tiny-huge: %d bytes)" % (len(made), args.dir, len(made["tiny-huge"][0])))


def cmd_urza(args):
    """Writes the fake Urza's flat records into the artifact server's DIR."""
    art = "http://127.0.0.1:%d/files/anchor.safetensors" % args.port
    for kid, checksum in [("k13-urza-badsum", "not-a-sha256"), ("k13-urza-mismatch", "0" * 64)]:
        with open(os.path.join(args.dir, "urza-%s.json" % kid), "w") as f:
            json.dump({"id": kid, "blueprint_id": "bp-" + kid, "status": "validated",
                       "kernel_binary_ref": art, "checksum": checksum}, f)


# --- artifact server ----------------------------------------------------------


def cmd_artifacts(args):
    """Serves DIR over HTTP on a free loopback port (written to PORTFILE):
    /files/.../NAME answers DIR/NAME (the query ignored), /slow/SECS/.../NAME
    waits SECS (at most 120) before answering it, anything else 404."""
    root = os.path.abspath(args.dir)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            sys.stderr.write("artifacts: " + (fmt % a) + "\n")

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            parts = [p for p in path.split("/") if p]
            if parts[:3] == ["api", "v1", "kernels"] and len(parts) == 4:
                return self.urza(parts[3])
            if len(parts) >= 3 and parts[0] == "slow":
                time.sleep(min(float(parts[1]), 120.0))
                parts = ["files"] + parts[2:]
            name = parts[-1] if parts else ""
            file = os.path.join(root, name)
            if len(parts) < 2 or parts[0] != "files" or "/" in name or not os.path.isfile(file):
                body = b"not found\n"
                self.send_response(404)
            else:
                with open(file, "rb") as f:
                    body = f.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass  # the daemon gave up on a slow answer

        def urza(self, kid):
            """A fake Urza: GET /api/v1/kernels/{id} answers the flat record
            DIR/urza-{id}.json, else 404."""
            file = os.path.join(root, "urza-%s.json" % kid)
            if "/" in kid or not os.path.isfile(file):
                self.send_response(404)
                body = b'{"detail":"Kernel not found"}'
            else:
                with open(file, "rb") as f:
                    body = f.read()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(args.portfile + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(args.portfile + ".tmp", args.portfile)
    srv.serve_forever()


# --- HTTP and process helpers -------------------------------------------------


class Daemon:
    def __init__(self, url, token=None, pid=None):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.pid = pid

    def req(self, method, path, body=None, headers=None, timeout=30, token=True):
        """One request on a fresh connection: (status, headers, body)."""
        h = {"Host": "127.0.0.1:%d" % self.port}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if token and self.token:
            h["Authorization"] = "Bearer " + self.token
        h.update(headers or {})
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def json(self, method, path, body=None, want=200, **kw):
        code, _, data = self.req(method, path, body, **kw)
        need(code == want, "%s %s: %d, want %d: %s" % (method, path, code, want, data[:300]))
        return json.loads(data) if data else None

    def live(self):
        try:
            return self.req("GET", "/v2/health/live", timeout=5)[0] == 200
        except OSError:
            return False

    def ready(self):
        """(status, body) of the readiness probe; status 0 when it fails."""
        try:
            code, _, body = self.req("GET", "/v2/health/ready", timeout=5)
            return code, body
        except OSError as e:
            return 0, str(e).encode()

    def metrics(self):
        code, _, data = self.req("GET", "/metrics", timeout=10)
        need(code == 200, "GET /metrics: %d" % code)
        return data.decode()

    def metric(self, name, **labels):
        return metric_sum(self.metrics(), name, **labels)

    def proc(self, field):
        """A /proc/PID/status field in KiB; None once the process is gone."""
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def alive(self):
        return self.pid is None or self.proc("VmRSS") is not None

    def error(self, data):
        try:
            return json.loads(data).get("error", "")
        except ValueError:
            return data.decode(errors="replace")


def metric_sum(text, name, **labels):
    """The sum of a metric's series whose labels include labels."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue
        if labels:
            lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest.split("}")[0]))
            if any(lab.get(k) != v for k, v in labels.items()):
                continue
        total += float(rest.rsplit(" ", 1)[1])
    return total


def wait_until(what, fn, limit=20.0, step=0.1):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(step)
    raise Fail("%s: not within %.0f s" % (what, limit))


def infer_body(shape, binary_output=False):
    n = 1
    for s in shape:
        n *= s
    b = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [0.25] * n}]}
    if binary_output:
        b["parameters"] = {"binary_data_output": True}
    return json.dumps(b).encode()


def infer_binary(shape):
    """A binary-extension request of zeros: (body, header length)."""
    n = 1
    for s in shape:
        n *= s
    hdr = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                  "parameters": {"binary_data_size": 4 * n}}],
                      "parameters": {"binary_data_output": True}}).encode()
    return hdr + bytes(4 * n), len(hdr)


def load_doc(kdir, kernel, **extra):
    """The document of kernel (from cmd_kernels), or, with extra members,
    a POST /v1/kernels body holding it."""
    with open(os.path.join(kdir, kernel + ".json")) as f:
        doc = json.load(f)
    if not extra:
        return doc
    body = {"compiled_kernel": doc}
    body.update(extra)
    return body


def with_ref(doc, ref):
    doc = dict(doc)
    doc["binary_ref"] = ref
    return doc


def read_response(sock, limit):
    """The status of the HTTP answer on sock (0 when the connection
    closed without one), reading for at most limit seconds."""
    sock.settimeout(limit)
    buf = b""
    try:
        while b"\r\n" not in buf and len(buf) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        return -1, buf
    except OSError:
        pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
    return (int(m.group(1)) if m else 0), buf


# --- the bus (a minimal RESP client) -------------------------------------------


class Redis:
    def __init__(self, port, db):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.s.makefile("rb")
        self.cmd("SELECT", str(db))

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self._reply()

    def _reply(self):
        line = self.f.readline()
        need(line, "redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise Fail("redis: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise Fail("redis: unexpected reply %r" % line)


COMMANDS = "control.kasmina.commands"
DLQ = COMMANDS + ".dlq"


class Bus:
    def __init__(self, d, port, db):
        self.d = d
        self.r = Redis(port, db)

    def publish(self, payload, event_id=None):
        if event_id is None:
            event_id = str(uuid.uuid4())
        ts = datetime.now(timezone.utc).isoformat()
        return self.r.cmd("XADD", COMMANDS, "*", "event_id", event_id, "sender_id", "redteam", "timestamp", ts,
                          "trace_id", "redteam", "topic", COMMANDS, "payload", json.dumps(payload))

    def dlq(self):
        out = {}
        for entry_id, fields in self.r.cmd("XRANGE", DLQ, "-", "+") or []:
            m = dict(zip(fields[0::2], fields[1::2]))
            out[m.get("dlq_source_id", "")] = m
        return out

    def outcomes(self):
        text = self.d.metrics()
        return {o: metric_sum(text, "kasmina_bus_commands_total", outcome=o)
                for o in ("handled", "skipped", "duplicate", "malformed", "dead_lettered", "retried")}

    def wait_consumer(self):
        """Probes with commands for a layer nobody serves until one is
        counted: the consumer group starts at "$"."""
        def seen():
            self.publish({"command": "set_alpha", "layer_name": "redteam-no-such-layer", "seed_idx": 0, "alpha": 0})
            return self.outcomes()["skipped"] > 0
        wait_until("the daemon's command consumer to start", seen, limit=20, step=0.5)

    def wait_dlq(self, entry_id, limit=15):
        return wait_until("entry %s in %s" % (entry_id, DLQ), lambda: self.dlq().get(entry_id), limit=limit, step=0.2)


def seeds(d):
    v = d.json("GET", "/v1/seeds")
    return v["seeds"] if isinstance(v, dict) else v


def seed_kernel(d, layer, idx):
    for s in seeds(d):
        if s.get("layer") == layer and s.get("seed_idx") == idx:
            return s.get("kernel", "")
    return ""


# --- attacks --------------------------------------------------------------------

INFER = "/v2/models/anchor/infer"
INDEX = "/v2/repository/index"


def attack_setup(d, a):
    """Not an attack: loads the anchor kernel into layer rt-layer (so that
    the host serves it) and waits for the command consumer."""
    # Seeds are slots of a declared layer (#14): rt-layer is declared with
    # room for the seed indexes the bus attacks use (up to 30).
    d.json("PUT", "/v1/layers/rt-layer", {"num_seeds": 32}, want=201)
    d.json("POST", "/v1/kernels", load_doc(a.kdir, "anchor", name="anchor", layer_name="rt-layer", seed_idx=0), want=201)
    Bus(d, a.redis_port, a.redis_db).wait_consumer()
    return "anchor loaded into rt-layer/0; the consumer reads commands"


def attack_body_flood(d, a):
    """#1: 60 connections promise 64 MiB bodies (and 20 promise 1 MB) and send a few bytes; then
    (open daemon) three real 30 MiB bodies against a 64 MiB budget."""
    rss0 = d.proc("VmRSS")
    held0 = d.metric("kasmina_http_body_bytes_held")  # other clients' bodies (attack 16's load runs beside)
    socks = []
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n")
    t0 = time.monotonic()
    # The outside test's 60 connections promising 64 MiB, half to inference
    # and half to the index (whose document limit is 1 MiB), and 20 more
    # to the index promising just under 1 MiB, which it reads as it arrives.
    conns = [(INFER, 64 * MiB), (INDEX, 64 * MiB)] * 30 + [(INDEX, 1000000)] * 20
    for path, declared in conns:
        s = socket.create_connection((d.host, d.port), timeout=10)
        s.sendall((head % (path, d.port, declared)).encode() + b'{"inputs":[')
        socks.append(("%s (Content-Length %d)" % (path, declared), s))
    time.sleep(1.0)
    rss1 = d.proc("VmRSS")
    held = d.metric("kasmina_http_body_bytes_held")
    need(d.alive(), "the daemon died under %d connections promising up to 64 MiB each" % len(conns))
    need(d.live(), "liveness failed while the connections were open")
    code, _, data = d.req("GET", "/v2")
    need(code == 200, "GET /v2 beside the flood: %d %s" % (code, data[:200]))
    if not d.token:
        code, _, data = d.req("POST", INFER, infer_body([1, 4]))
        need(code == 200, "a small inference beside the flood: %d %s" % (code, data[:200]))
    say("%d connections promising up to 64 MiB: RSS %d -> %d MiB, %.0f KiB of bodies held"
        % (len(conns), rss0 // 1024, rss1 // 1024, held / 1024))
    need(rss1 - rss0 < 256 * 1024, "RSS grew by %d MiB for %d connections that sent 11 bytes each" % ((rss1 - rss0) // 1024, len(conns)))
    need(held - held0 <= len(conns) * 64 * 1024, "%.0f bytes held for %d connections that sent 11 bytes each" % (held, len(conns)))
    statuses = {}
    for path, s in socks:
        left = max(0.5, a.read_timeout + 15 - (time.monotonic() - t0))
        code, _ = read_response(s, left)
        s.close()
        statuses.setdefault(path, []).append(code)
    waited = time.monotonic() - t0
    say("answers after %.1f s: %s" % (waited, {p: sorted(set(c)) for p, c in statuses.items()}))
    # 408 once the body stalls; 413 at once where the declared size is over
    # the route's limit (1 MiB on the document routes); 401 for a write
    # without the token; or the connection closed.
    ok_codes = {408, 413, 0} | ({401} if d.token else set())
    for path, codes in statuses.items():
        bad = [c for c in codes if c not in ok_codes]
        need(not bad, "%s: stalled bodies answered %s (want 408 or 413%s, or the connection closed)"
             % (path, sorted(set(bad)), " or 401" if d.token else ""))
    need(-1 not in sum(statuses.values(), []), "a stalled body was still open %.0f s after it stalled" % waited)
    wait_until("body bytes held back to %d" % held0, lambda: d.metric("kasmina_http_body_bytes_held") <= held0, limit=10)
    summary = "60 stalled bodies promising 64 MiB (+20 promising 1 MB to the index): RSS +%d MiB, %.0f KiB held, answered %s after %.1f s" % (
        (rss1 - rss0) // 1024, held / 1024, sorted(set(sum(statuses.values(), []))), waited)
    if a.budget_phase:
        summary += "; " + budget_phase(d, held0)
    hwm = d.proc("VmHWM")
    need(d.alive() and d.live(), "the daemon died")
    need(hwm is not None and hwm < 512 * 1024, "peak RSS %s KiB, want under 512 MiB" % hwm)
    return summary + "; peak RSS %d MiB under ulimit -v" % (hwm // 1024)


def budget_phase(d, held0):
    """Three bodies of 30 MiB held at once (all but their last byte)
    against a 64 MiB budget: at least one must be refused 503 +
    Retry-After (or 413), none may be dropped unanswered or answered 5xx
    otherwise."""
    size = 30 * MiB
    chunk = b" " * MiB
    results = [None] * 3
    barrier = threading.Barrier(3, timeout=30)

    def client(i):
        s = socket.create_connection((d.host, d.port), timeout=20)
        s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n" % (INFER, d.port, size)).encode())
        sent, early = 0, None
        try:
            while sent < size - 1:
                n = min(len(chunk), size - 1 - sent)
                s.sendall(chunk[:n])
                sent += n
                if select.select([s], [], [], 0)[0]:
                    early = True
                    break
        except OSError:
            early = True
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        if not early:
            try:
                s.sendall(b"]")
            except OSError:
                pass
        code, raw = read_response(s, 20)
        results[i] = (code, b"retry-after:" in raw.lower(), sent)
        s.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    say("three 30 MiB bodies against a 64 MiB budget: %s" % (results,))
    need(all(r is not None for r in results), "a 30 MiB client did not finish within 60 s")
    refused = [r for r in results if r[0] == 413 or (r[0] == 503 and r[1])]
    need(refused, "no body was refused (413, or 503 with Retry-After) although 90 MiB were held against a 64 MiB budget")
    bad = [r for r in results if r[0] >= 500 and r[0] != 503 or r[0] == 503 and not r[1] or r[0] in (0, -1, 200)]
    need(not bad, "unexpected answers %s (want 400 for a body that is no JSON, 413 or 503 + Retry-After)" % bad)
    wait_until("body bytes held back to %d" % held0, lambda: d.metric("kasmina_http_body_bytes_held") <= held0, limit=10)
    code, _, data = d.req("POST", INFER, infer_body([1, 4]))
    need(code == 200, "a small inference once the budget is free: %d %s" % (code, data[:200]))
    return "3×30 MiB against 64 MiB: %s" % sorted(r[0] for r in results)


def attack_outputs(d, a):
    """#2: a kernel file under 1 KiB whose output is 1 MiB per sample, at
    batch 4096 (4 GiB of output)."""
    md = d.json("GET", "/v2/models/tiny-huge")
    mb = md.get("parameters", {}).get("max_batch")
    need(isinstance(mb, int) and 1 <= mb < 4096, "max_batch %r, want the output limit's (64 MiB / 1 MiB per sample)" % mb)
    rss0 = d.proc("VmRSS")
    t0 = time.monotonic()
    code, _, data = d.req("POST", "/v2/models/tiny-huge/infer", infer_body([4096, 1, 1, 1]), timeout=60)
    code4096, msg = code, d.error(data)
    say("batch 4096: %d in %.2f s: %s" % (code, time.monotonic() - t0, msg))
    need(d.alive(), "the daemon died on batch 4096 (4 GiB of output)")
    need(400 <= code < 500 and "limit" in msg, "batch 4096: %d %s, want 4xx naming the limit" % (code, msg))
    code, _, data = d.req("POST", "/v2/models/tiny-huge/infer", infer_body([mb + 1, 1, 1, 1]))
    need(400 <= code < 500, "batch max_batch+1 = %d: %d %s, want 4xx" % (mb + 1, code, data[:200]))
    code, _, data = d.req("POST", "/v2/models/tiny-huge/infer", infer_body([1, 1, 1, 1], binary_output=True))
    need(code == 200, "batch 1: %d %s" % (code, data[:200]))
    rss1 = d.proc("VmRSS")
    need(d.live(), "liveness failed after the huge batch")
    return "batch 4096 -> %d naming the limit, max_batch %d; RSS %d -> %d MiB" % (code4096, mb, rss0 // 1024, rss1 // 1024)


def attack_fifo_refs(d, a):
    """#3: a named pipe behind a file reference, over HTTP and the bus."""
    took = 0
    for ref in ["pipe.safetensors", "file://" + os.path.join(a.kdir, "pipe.safetensors")]:
        doc = with_ref(load_doc(a.kdir, "fifo-ok"), ref)
        t0 = time.monotonic()
        code, _, data = d.req("POST", "/v1/kernels", {"compiled_kernel": doc, "name": "fifo-ref"}, timeout=20)
        took = max(took, time.monotonic() - t0)
        msg = d.error(data)
        say("HTTP %s: %d in %.2f s: %s" % (ref, code, took, msg))
        need(400 <= code < 500 and "named pipe" in msg, "POST /v1/kernels of a pipe (%s): %d %s, want 4xx naming the pipe" % (ref, code, msg))
    bus = Bus(d, a.redis_port, a.redis_db)
    before = bus.outcomes()
    ref = "file://" + os.path.join(a.kdir, "pipe.safetensors")
    eid = bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 30, "artifact_id": ref})
    t0 = time.monotonic()
    dl = bus.wait_dlq(eid)
    took_bus = time.monotonic() - t0
    after = bus.outcomes()
    say("bus: dead-lettered in %.2f s: %s" % (took_bus, dl.get("dlq_reason")))
    need("named pipe" in dl.get("dlq_reason", ""), "DLQ reason does not name the pipe: %r" % dl.get("dlq_reason"))
    need(after["retried"] == before["retried"], "the pipe's command was retried")
    return "HTTP (path and file://) %d within %.2f s; bus dead-lettered in %.1f s, not retried" % (code, took, took_bus)


def attack_fifo_index(d, a):
    """#3 (start-up): the pipe among --kernels is a failed load naming it."""
    idx = {e["name"]: e for e in d.json("POST", INDEX, {})}
    e = idx.get("pipe")
    need(e is not None and e.get("state") != "READY" and "named pipe" in e.get("reason", ""),
         "pipe.safetensors in the index: %r, want unavailable naming the pipe" % e)
    need(idx.get("fifo-ok", {}).get("state") == "READY", "the regular kernel beside the pipe is not READY: %r" % idx.get("fifo-ok"))
    return "the pipe is listed as failed: %s" % e.get("reason")


def attack_state_break(d, a):
    """#4, first half: the state directory replaced by a file."""
    d.json("POST", "/v1/kernels", load_doc(a.kdir, "state-kept", name="state-kept"), want=201)
    sd = a.state_dir
    os.rename(sd, sd + ".away")
    try:
        with open(sd, "w"):
            pass
        code, h, data = d.req("POST", "/v1/kernels", load_doc(a.kdir, "state-refused", name="state-refused"))
        msg = d.error(data)
        say("load while the state directory is a file: %d %s" % (code, msg))
        need(code in (500, 503, 507) and "state" in msg,
             "a load that cannot be saved: %d %s, want 5xx naming the state error" % (code, msg))
        need(code != 503 or h.get("retry-after"), "503 without Retry-After")
        rc, rbody = d.ready()
        say("readiness: %d %s" % (rc, rbody[:200]))
        need(rc == 503, "readiness %d while the state directory fails, want 503" % rc)
        kernels = [k["name"] for k in d.json("GET", "/v1/kernels")["kernels"]]
        need("state-refused" not in kernels, "the refused load is served: %s" % kernels)
        failing = d.metric("kasmina_state_store_failing")
        need(failing == 1, "kasmina_state_store_failing = %s, want 1" % failing)
    finally:
        os.remove(sd)
        os.rename(sd + ".away", sd)
    wait_until("readiness back once the directory is repaired", lambda: d.ready()[0] == 200, limit=20)
    d.json("POST", "/v1/kernels", load_doc(a.kdir, "state-after", name="state-after"), want=201)
    return "load refused %d naming the state error, readiness 503, ready again after repair" % code


def attack_state_after_kill(d, a):
    """#4, second half: after SIGKILL and a restart, what was acknowledged
    is there and what was refused is not."""
    names = sorted(k["name"] for k in d.json("GET", "/v1/kernels")["kernels"])
    say("kernels after SIGKILL and a restart: %s" % names)
    need("state-kept" in names and "state-after" in names, "an acknowledged load was lost: %s" % names)
    need("state-refused" not in names, "the refused load came back: %s" % names)
    return "after kill -9: %s" % ", ".join(names)


def attack_damaged(d, a):
    """#6: after one byte of a stored artifact was flipped."""
    v = d.json("GET", "/v1/kernels")
    names = [k["name"] for k in v["kernels"]]
    reason = (v.get("failed") or {}).get("seed-linear-64", "")
    say("restored: %s; seed-linear-64 failed: %s" % (names, reason))
    need("seed-linear-64" not in names, "the damaged artifact was restored and is served")
    need("damaged" in reason, "the damage is not reported: %r" % reason)
    need("mlp-gelu" in names, "the undamaged kernels were not restored: %s" % names)
    code, _, _ = d.req("POST", "/v2/models/seed-linear-64/infer", infer_body([1, 64]))
    need(code == 404, "the damaged kernel answers %d, want 404" % code)
    return "refused at restore: %s" % re.sub(r"/\S+/", ".../", reason)


SECRETS = ("AKIAREDTEAMCRED", "5ec7e75ec7e75ec7", "pa55REDTEAM")


def attack_redact(d, a):
    """#8: presigned URL and userinfo credentials in references never show
    in views, answers or dead-letter reasons (the daemon's log is checked
    by run.sh)."""
    q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%s%%2F20261125%%2Fus-east-1%%2Fs3%%2Faws4_request&X-Amz-Signature=%s" % SECRETS[:2]
    base = "http://127.0.0.1:%d" % a.art_port
    doc = with_ref(load_doc(a.kdir, "k8"), base + "/files/k8.safetensors?" + q)
    d.json("POST", "/v1/kernels", {"compiled_kernel": doc, "name": "k8", "layer_name": "rt-layer-b", "seed_idx": 0}, want=201)
    doc2 = with_ref(load_doc(a.kdir, "k8"), "http://redteam:%s@127.0.0.1:%d/files/missing.safetensors?%s" % (SECRETS[2], a.art_port, q))
    code, _, data = d.req("POST", "/v1/kernels", {"compiled_kernel": doc2, "name": "k8-missing"})
    seen = {"POST /v1/kernels (userinfo)": data}
    doc3 = with_ref(load_doc(a.kdir, "k8"), base + "/files/missing.safetensors?" + q)
    code3, _, data3 = d.req("POST", "/v1/kernels", {"compiled_kernel": doc3, "name": "k8-missing"})
    seen["POST /v1/kernels (404)"] = data3
    need(code3 == 404, "a presigned URL that is not found: %d %s" % (code3, data3[:200]))
    for p in ["/v1/kernels", "/v1/kernels/k8", "/v1/seeds", "/v1/layers"]:
        seen["GET " + p] = d.req("GET", p)[2]
    seen["POST " + INDEX] = d.req("POST", INDEX, {})[2]
    bus = Bus(d, a.redis_port, a.redis_db)
    bus.wait_consumer()
    for i, ref in enumerate(["http://redteam:%s@127.0.0.1:%d/files/gone.safetensors?%s" % (SECRETS[2], a.art_port, q),
                             base + "/files/gone.safetensors?" + q]):
        eid = bus.publish({"command": "load_kernel", "layer_name": "rt-layer-b", "seed_idx": 1 + i, "artifact_id": ref})
        dl = bus.wait_dlq(eid)
        seen["dlq_reason %d" % (i + 1)] = dl.get("dlq_reason", "").encode()
        say("dlq_reason %d: %s" % (i + 1, dl.get("dlq_reason")))
    say("userinfo answer: %d %s" % (code, d.error(data)))
    say("presigned 404 answer: %d %s" % (code3, d.error(data3)))
    for where, text in seen.items():
        for s in SECRETS:
            need(s.encode() not in text, "%s shows the credential %s" % (where, s))
    need(b"REDACTED" in seen["GET /v1/kernels/k8"], "the view of k8 does not show its reference redacted")
    return "no credential in %d views, answers and the DLQ reason" % len(seen)


def attack_auth_read(d, a):
    """#8: --auth-read requires the token on reads; probes and /metrics stay open."""
    reads = [("GET", "/v1/kernels"), ("GET", "/v2/models/seed-linear-64"), ("GET", "/v2"), ("POST", INDEX),
             ("GET", "/v1/devices"), ("GET", "/v1/seeds")]
    for m, p in reads:
        code = d.req(m, p, {} if m == "POST" else None, token=False)[0]
        need(code == 401, "%s %s without the token: %d, want 401" % (m, p, code))
        code = d.req(m, p, {} if m == "POST" else None)[0]
        need(code == 200, "%s %s with the token: %d" % (m, p, code))
    for p in ["/v2/health/live", "/v2/health/ready", "/metrics"]:
        code = d.req("GET", p, token=False)[0]
        need(code == 200, "GET %s without the token: %d, want 200" % (p, code))
    return "%d read routes 401 without the token, 200 with it; probes and /metrics open" % len(reads)


def attack_metrics_host(d, a):
    """#9: /metrics from a DNS-rebinding page (a foreign Host or Origin)."""
    out = []
    for hdr in [{"Host": "evil.example"}, {"Host": "evil.example:%d" % d.port}, {"Origin": "http://evil.example"}]:
        code = d.req("GET", "/metrics", headers=hdr)[0]
        out.append(code)
        need(code == 403, "GET /metrics with %s: %d, want 403" % (hdr, code))
    code = d.req("GET", "/metrics", headers={"Host": "localhost:%d" % d.port})[0]
    need(code == 200, "GET /metrics with Host localhost: %d" % code)
    return "foreign Host/Origin: %s; localhost: 200" % out


def passwd():
    with open("/etc/passwd", "rb") as f:
        return f.read()


def attack_no_root(d, a):
    """#10: no kernel root (started from /): file references are refused and
    nothing of /etc/passwd shows, over HTTP or in dead-letter reasons."""
    pw = passwd()
    leaks = [b"root:x", pw[:8], hashlib.sha256(pw).hexdigest().encode(), str(len(pw)).encode() + b" bytes"]
    base = load_doc(a.kdir, "noroot")
    refs = ["/etc/passwd", "file:///etc/passwd", "etc/passwd", "./etc/passwd", "../../etc/passwd"]
    for ref in refs:
        code, _, data = d.req("POST", "/v1/kernels", with_ref(base, ref))
        say("binary_ref %s: %d %s" % (ref, code, d.error(data)))
        need(code == 422 and b"no kernel root" in data, "binary_ref %s: %d %s, want 422 saying no kernel root" % (ref, code, data[:200]))
        for leak in leaks:
            need(leak not in data, "binary_ref %s: the answer shows %r of /etc/passwd" % (ref, leak))
    # A layer to send commands for: a kernel over http.
    doc = with_ref(base, "http://127.0.0.1:%d/files/noroot.safetensors" % a.art_port)
    d.json("POST", "/v1/kernels", {"compiled_kernel": doc, "name": "noroot", "layer_name": "rt-layer-c", "seed_idx": 0}, want=201)
    bus = Bus(d, a.redis_port, a.redis_db)
    bus.wait_consumer()
    for i, ref in enumerate(["/etc/passwd", "file:///etc/passwd", "etc/passwd.safetensors"]):
        eid = bus.publish({"command": "load_kernel", "layer_name": "rt-layer-c", "seed_idx": 1 + i, "artifact_id": ref})
        reason = bus.wait_dlq(eid).get("dlq_reason", "")
        say("bus %s: %s" % (ref, reason))
        for leak in leaks:
            need(leak.decode() not in reason, "bus %s: the DLQ reason shows %r of /etc/passwd" % (ref, leak))
    return "%d HTTP refs 422, 3 bus refs dead-lettered, nothing of /etc/passwd shown" % len(refs)


def attack_quote(d, a):
    """#10: a file inside the kernel root that is not a kernel (a fake
    passwd line): its error quotes no more than a short prefix, over HTTP
    and in the dead-letter reason."""
    doc = with_ref(load_doc(a.kdir, "anchor"), "notakernel.safetensors")
    doc["metadata"] = dict(doc["metadata"], checksum=None)  # so that the file is parsed
    code, _, data = d.req("POST", "/v1/kernels", {"compiled_kernel": doc, "name": "notakernel"})
    msg = d.error(data)
    say("HTTP: %d %s" % (code, msg))
    need(400 <= code < 500, "a file that is no kernel: %d %s" % (code, msg))
    bus = Bus(d, a.redis_port, a.redis_db)
    eid = bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 40, "artifact_id": "notakernel.safetensors"})
    reason = bus.wait_dlq(eid).get("dlq_reason", "")
    say("bus: %s" % reason)
    for where, text in (("the HTTP answer", msg), ("the DLQ reason", reason)):
        need("SECRET-TAIL" not in text and "bin/bash" not in text, "%s quotes the file beyond a short prefix: %s" % (where, text))
    quoted = re.findall(r'"(root:[^"]*)"', msg + reason)
    return "HTTP %d and DLQ reason quote at most %d bytes of the file" % (code, max([len(q) for q in quoted] or [0]))


def attack_symlink(d, a):
    """#11: a symbolic link out of --kernels."""
    idx = {e["name"]: e for e in d.json("POST", INDEX, {})}
    e = idx.get("escape")
    need(e is not None and e.get("state") != "READY" and "outside" in e.get("reason", ""),
         "escape.safetensors in the index: %r, want unavailable, leading outside" % e)
    need("outside-k" not in idx, "the kernel behind the link is listed: %r" % idx.get("outside-k"))
    code = d.req("GET", "/v2/models/outside-k")[0]
    need(code == 404, "the kernel behind the link answers %d" % code)
    code, _, data = d.req("POST", "/v1/kernels", {"compiled_kernel": with_ref(load_doc(a.kdir, "outside-k"), "escape.safetensors"),
                                                  "name": "escape-ref"})
    need(400 <= code < 500, "a reference to the link: %d %s, want 4xx" % (code, data[:200]))
    return "listed as failed (%s); reference refused %d" % (re.sub(r"/\S+/", ".../", e["reason"]), code)


def attack_slash_ids(d, a):
    """#12: bus load_kernel whose artifact_id holds '/'."""
    bus = Bus(d, a.redis_port, a.redis_db)
    refs = {1: ("sub/dir/k12a.safetensors", "k12a"),
            2: ("file://" + os.path.join(a.kdir, "sub", "k12b.safetensors"), "k12b"),
            3: ("http://127.0.0.1:%d/files/a/b/k12c.safetensors" % a.art_port, "k12c")}
    ids = {}
    for idx, (ref, _) in refs.items():
        ids[idx] = bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": idx, "artifact_id": ref})
    for idx, (ref, name) in refs.items():
        try:
            wait_until("seed rt-layer/%d to hold %s" % (idx, name), lambda: seed_kernel(d, "rt-layer", idx) == name, limit=20, step=0.2)
        except Fail:
            dl = bus.dlq().get(ids[idx])
            raise Fail("load_kernel %s: not loaded (DLQ: %s)" % (ref, dl and dl.get("dlq_reason")))
    return "3 artifact_ids with '/' (path, file://, http://) loaded as k12a, k12b, k12c"


def attack_classify(d, a):
    """#13: permanent errors answer 4xx over HTTP and go straight to the DLQ
    on the bus; every problem found is reported, not only the first."""
    base = "http://127.0.0.1:%d" % a.art_port
    doc = load_doc(a.kdir, "anchor")
    problems = []
    seen = []

    def post(what, body, want):
        code, h, data = d.req("POST", "/v1/kernels", body)
        seen.append("%s %d" % (what, code))
        say("HTTP %s: %d (Retry-After %s) %s" % (what, code, h.get("retry-after"), d.error(data)))
        if code not in want:
            problems.append("HTTP %s: %d%s %s, want %s" % (what, code, " + Retry-After" if h.get("retry-after") else "",
                                                          d.error(data), " or ".join(map(str, want))))

    post("artifact 404", {"compiled_kernel": with_ref(doc, base + "/files/missing.safetensors"), "name": "k13-404"}, (404,))
    post("checksum mismatch", {"compiled_kernel": dict(doc, metadata=dict(doc["metadata"], checksum="0" * 64)), "name": "k13-sum"}, (422,))
    post("malformed checksum", {"compiled_kernel": dict(doc, metadata=dict(doc["metadata"], checksum="not-a-sha256")),
                                "name": "k13-badsum"}, (400, 422))
    bus = Bus(d, a.redis_port, a.redis_db)
    cases = [("artifact 404", base + "/files/missing.safetensors"),
             ("ref outside the kernel root", "../outside/outside-k.safetensors"),
             ("Urza 404", "k13-urza-missing"),
             ("Urza record with a malformed checksum", "k13-urza-badsum"),
             ("Urza record whose artifact fails its checksum", "k13-urza-mismatch")]
    before = bus.outcomes()
    ids = [(what, bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 13 + i, "artifact_id": ref}))
           for i, (what, ref) in enumerate(cases)]
    t0 = time.monotonic()
    dead = {}  # entry id -> (seconds to the DLQ, entry)
    while time.monotonic() - t0 < 15 and len(dead) < len(ids):
        dlq = bus.dlq()
        for _, eid in ids:
            if eid in dlq and eid not in dead:
                dead[eid] = (time.monotonic() - t0, dlq[eid])
        time.sleep(0.1)
    after = bus.outcomes()
    retried = after["retried"] - before["retried"]
    for what, eid in ids:
        if eid in dead:
            took, entry = dead[eid]
            say("bus %s: dead-lettered after %.1f s: %s" % (what, took, entry.get("dlq_reason")))
            seen.append("bus %s DLQ %.1f s" % (what, took))
        else:
            problems.append("bus %s: not dead-lettered within 15 s (left pending for a retry)" % what)
    if retried:
        problems.append("%d bus command(s) retried as transient" % retried)
    need(not problems, "; ".join(problems))
    return "; ".join(seen) + "; no retry"


def attack_slow_seed(d, a):
    """#14: a slow artifact for one seed does not hold up another seed."""
    bus = Bus(d, a.redis_port, a.redis_db)
    slow = "http://127.0.0.1:%d/slow/%d/k14slow.safetensors" % (a.art_port, a.slow)
    t0 = time.monotonic()
    bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 10, "artifact_id": slow})
    time.sleep(0.5)
    bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 11, "artifact_id": "k14fast.safetensors"})
    wait_until("the fast seed's command", lambda: seed_kernel(d, "rt-layer", 11) == "k14fast", limit=a.slow - 2, step=0.2)
    took = time.monotonic() - t0
    need(seed_kernel(d, "rt-layer", 10) != "k14slow", "the slow artifact was not slow")
    say("fast seed loaded %.1f s after the slow command (artifact takes %d s)" % (took, a.slow))
    wait_until("the slow seed's command", lambda: seed_kernel(d, "rt-layer", 10) == "k14slow", limit=a.slow + 20, step=0.5)
    return "other seed served after %.1f s while a %d s artifact loaded; the slow one loaded after" % (took, a.slow)


def attack_empty_event_id(d, a):
    """#15: two commands with an empty event_id."""
    bus = Bus(d, a.redis_port, a.redis_db)
    before = bus.outcomes()
    bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 20, "artifact_id": "k15a.safetensors"}, event_id="")
    bus.publish({"command": "load_kernel", "layer_name": "rt-layer", "seed_idx": 21, "artifact_id": "k15b.safetensors"}, event_id="")
    wait_until("both commands handled", lambda: seed_kernel(d, "rt-layer", 20) == "k15a" and seed_kernel(d, "rt-layer", 21) == "k15b", limit=20)
    after = bus.outcomes()
    need(after["duplicate"] == before["duplicate"], "a command with an empty event_id was dropped as a duplicate")
    return "both handled (+%d handled, +0 duplicate)" % (after["handled"] - before["handled"])


def attack_load_deadline(d, a):
    """#16: a load whose artifact takes longer than the write timeout (60 s)."""
    doc = with_ref(load_doc(a.kdir, "anchor"), "http://127.0.0.1:%d/slow/%d/anchor.safetensors" % (a.art_port, a.slow))
    t0 = time.monotonic()
    try:
        code, _, data = d.req("POST", "/v1/kernels", {"compiled_kernel": doc, "name": "k16-slow"}, timeout=a.slow + 10)
    except (OSError, http.client.HTTPException) as e:
        raise Fail("no answer after %.1f s: %s" % (time.monotonic() - t0, e))
    took = time.monotonic() - t0
    msg = d.error(data)
    say("%d after %.1f s: %s" % (code, took, msg))
    need(code == 504 and "took longer" in msg, "a load past its deadline: %d %s, want 504 with the reason" % (code, msg))
    need(took < 60, "answered after %.1f s, past the 60 s write timeout" % took)
    names = [k["name"] for k in d.json("GET", "/v1/kernels")["kernels"]]
    need("k16-slow" not in names, "the cancelled load was kept")
    return "504 after %.1f s (write timeout 60 s), nothing loaded" % took


def attack_repeats(d, a):
    """#17: the same document twice, then other content under the same name."""
    c1 = d.req("POST", "/v1/kernels", load_doc(a.kdir, "k17", name="k17"))[0]
    c2 = d.req("POST", "/v1/kernels", load_doc(a.kdir, "k17", name="k17"))[0]
    c3, _, data = d.req("POST", "/v1/kernels", load_doc(a.kdir, "k17-other", name="k17"))
    say("%d %d %d %s" % (c1, c2, c3, d.error(data)))
    need((c1, c2, c3) == (201, 200, 409), "first, same again, other content: %d %d %d, want 201 200 409" % (c1, c2, c3))
    return "201, 200, 409 (%s)" % d.error(data)[:80]


CLASS_PHRASES = re.compile(r"^(loading kernel: )?(bad input|bad request|not found|model not found|malformed|refused|conflict|"
                           r"too large|unavailable|unsupported|internal|timeout)(: |$)", re.I)


def attack_messages(d, a):
    """#18: error messages say their cause once."""
    cases = [
        ("POST", "/v2/models/nope/infer", infer_body([1, 4]), 404),
        ("GET", "/v2/models/nope", None, 404),
        ("GET", "/v2/models/nope/ready", None, 404),
        ("DELETE", "/v1/kernels/nope", None, 404),
        ("GET", "/v1/kernels/nope", None, 404),
        ("POST", "/v2/repository/models/nope/load", None, 404),
        ("POST", "/v1/kernels", load_doc(a.kdir, "anchor", name="a/b"), 400),
        ("POST", "/v1/kernels", {"compiled_kernel": with_ref(load_doc(a.kdir, "anchor"), "nothere.safetensors"), "name": "k18"}, 404),
        ("POST", "/v2/models/anchor/infer", infer_body([1, 5]), 400),
        ("POST", "/v2/models/anchor/infer", b"{", 400),
    ]
    for m, p, body, want in cases:
        code, _, data = d.req(m, p, body)
        msg = d.error(data)
        say("%s %s: %d %s" % (m, p, code, msg))
        need(code == want, "%s %s: %d, want %d: %s" % (m, p, code, want, msg))
        need(msg, "%s %s: no error message" % (m, p))
        need(not CLASS_PHRASES.search(msg), "%s %s: the message starts with a class phrase: %s" % (m, p, msg))
        parts = [s.strip().lower() for s in msg.split(": ")]
        dup = [x for x, y in zip(parts, parts[1:]) if x == y]
        need(not dup, "%s %s: %r said twice: %s" % (m, p, dup, msg))
    return "%d error answers, each cause said once" % len(cases)


def attack_disconnects(d, a):
    """#20: clients that disconnect while their requests wait (one
    executor, kept busy) neither open the kernel's breaker nor make the
    node unready."""
    body, hl = infer_binary([4096, 1024])
    small, shl = infer_binary([1, 1024])
    path = "/v2/models/busy/infer"
    hdr = {"Inference-Header-Content-Length": str(hl), "Content-Type": "application/octet-stream"}

    def canceled():
        return d.metric("kasmina_inference_failures_total", kernel="busy", reason="canceled")

    def busy_now():
        text = d.metrics()
        return metric_sum(text, "kasmina_running_requests") + metric_sum(text, "kasmina_pending_requests") > 0

    c0 = canceled()
    gone = 0
    for round_ in range(5):
        # Four requests of 8.6 GFLOP each keep the one executor busy...
        blockers = [threading.Thread(target=lambda: d.req("POST", path, body, hdr, timeout=60)) for _ in range(4)]
        for t in blockers:
            t.start()
        try:
            wait_until("the executor to be busy", busy_now, limit=10, step=0.02)
        except Fail:
            pass
        # ...while eight clients send a request and hang up 20 ms later.
        for _ in range(8):
            s = socket.create_connection((d.host, d.port), timeout=10)
            s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nInference-Header-Content-Length: %d\r\n"
                       "Content-Length: %d\r\n\r\n" % (path, d.port, shl, len(small))).encode() + small)
            time.sleep(0.02)
            s.close()
        for t in blockers:
            t.join(60)
        gone = canceled() - c0
        say("round %d: %d requests cancelled in the runtime so far" % (round_ + 1, gone))
        if gone >= 5:
            break
    need(gone >= 5, "only %d disconnects reached the runtime in 5 rounds: the attack could not be judged" % gone)
    runtime_failures = d.metric("kasmina_inference_failures_total", kernel="busy", reason="runtime")
    breaker = d.metric("kasmina_kernel_breaker_open", kernel="busy")
    rc, rbody = d.ready()
    mc = d.req("GET", "/v2/models/busy/ready")[0]
    code = d.req("POST", path, small, {"Inference-Header-Content-Length": str(shl)})[0]
    say("runtime failures %d, breaker open %d, node ready %d, model ready %d, inference %d" % (runtime_failures, breaker, rc, mc, code))
    need(runtime_failures == 0, "%d disconnects counted as kernel failures" % runtime_failures)
    need(breaker == 0, "the breaker opened after %d client disconnects" % gone)
    need(rc == 200, "node unready after %d client disconnects: %s" % (gone, rbody[:200]))
    need(mc == 200 and code == 200, "the kernel is not serving: ready %d, inference %d" % (mc, code))
    return "%d disconnects in the runtime: breaker closed, node and model ready" % gone


def live_heap(d):
    """The daemon's live heap, estimated as half the next GC goal (GOGC
    100) after two collections forced by churning the index: (bytes, heap
    in use bytes, index answer bytes)."""
    gcs = lambda text: metric_sum(text, "go_gc_duration_seconds_count")
    g0 = gcs(d.metrics())
    size = 0
    for _ in range(300):
        size = len(d.req("POST", INDEX, {})[2])
        text = d.metrics()
        if gcs(text) >= g0 + 2:
            break
    return metric_sum(text, "go_memstats_next_gc_bytes") / 2, metric_sum(text, "go_memstats_heap_inuse_bytes"), size


def attack_failed_loads(d, a):
    """#21: 3000 failed loads with 255-byte names and long reasons (a fresh
    daemon, so that the heap it keeps is what the failures left)."""
    h0, u0, i0 = live_heap(d)
    doc = load_doc(a.kdir, "anchor")
    c = http.client.HTTPConnection(d.host, d.port, timeout=30)
    codes = {}
    t0 = time.monotonic()
    for i in range(3000):
        ref = "/".join(["deep"] * 200) + "/missing-%d.safetensors" % i  # a 1 KiB reference, named in the reason
        name = ("f%04d-" % i) + "x" * 249 if i % 2 else ("f%04d-" % i) + "y" * 4000  # valid (255 bytes) or too long
        body = json.dumps({"compiled_kernel": with_ref(doc, ref), "name": name}).encode()
        c.request("POST", "/v1/kernels", body=body, headers={"Host": "127.0.0.1:%d" % d.port, "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
        if time.monotonic() - t0 > 120:
            raise Fail("3000 failed loads took over 120 s (%d done)" % i)
    c.close()
    took = time.monotonic() - t0
    h1, u1, i1 = live_heap(d)
    failed = d.json("GET", "/v1/kernels").get("failed") or {}
    say("3000 failed loads in %.1f s %s: live heap %.1f -> %.1f MiB (in use %.1f -> %.1f), index %d -> %d bytes, %d remembered"
        % (took, codes, h0 / MiB, h1 / MiB, u0 / MiB, u1 / MiB, i0, i1, len(failed)))
    need(i1 < 2 * MiB, "the repository index is %d bytes after 3000 failed loads" % i1)
    need(h1 - h0 < 32 * MiB, "the live heap grew by %.0f MiB after 3000 failed loads" % ((h1 - h0) / MiB))
    need(len(failed) <= 1000, "%d failed loads remembered" % len(failed))
    return "live heap %.1f -> %.1f MiB, index %d KiB, %d failures remembered" % (h0 / MiB, h1 / MiB, i1 // 1024, len(failed))


def attack_series(d, a):
    """#22: 1000 load/infer/unload cycles of distinct names leave no
    per-kernel series behind."""
    doc = load_doc(a.kdir, "cycle")
    body = infer_body([1, 4])
    c = http.client.HTTPConnection(d.host, d.port, timeout=30)
    hdr = {"Host": "127.0.0.1:%d" % d.port, "Content-Type": "application/json"}
    t0 = time.monotonic()

    def do(m, p, b, want):
        c.request(m, p, body=b, headers=hdr)
        r = c.getresponse()
        data = r.read()
        need(r.status == want, "%s %s: %d %s" % (m, p, r.status, data[:200]))

    live = []
    for i in range(1000):
        name = "cyc-%04d" % i
        do("POST", "/v1/kernels", json.dumps({"compiled_kernel": doc, "name": name}).encode(), 201)
        do("POST", "/v2/models/%s/infer" % name, body, 200)
        if i == 0:
            # While loaded, the kernel has series (its fallback counter
            # among them): the check below can fail.
            live = [l for l in d.metrics().splitlines() if 'kernel="cyc-0000"' in l]
            need(any(l.startswith("kasmina_fallbacks_total") for l in live),
                 "no kasmina_fallbacks_total series for a loaded kernel that fell back: %s" % live[:3])
        do("DELETE", "/v1/kernels/" + name, None, 200)
        if time.monotonic() - t0 > 150:
            raise Fail("1000 cycles took over 150 s (%d done)" % i)
    c.close()
    took = time.monotonic() - t0
    text = d.metrics()
    left = [l for l in text.splitlines() if 'kernel="cyc-' in l]
    say("1000 cycles in %.1f s; %d series per loaded kernel, %d series of unloaded kernels left" % (took, len(live), len(left)))
    need(not left, "%d series of unloaded kernels left, e.g. %s" % (len(left), left[:1]))
    return "1000 load/infer/unload cycles in %.0f s: %d series while loaded (fallbacks included), 0 left" % (took, len(live))


def attack_race(d, a):
    """#23: inference and unload/load of one kernel at once, for a few seconds
    (run.sh checks the race-built daemon's stderr)."""
    doc = load_doc(a.kdir, "race", name="race")
    d.json("POST", "/v1/kernels", doc, want=201)
    stop = time.monotonic() + a.seconds
    counts = {}
    lock = threading.Lock()
    errors = []

    def infer():
        c = None
        while time.monotonic() < stop:
            try:
                c = c or http.client.HTTPConnection(d.host, d.port, timeout=30)
                c.request("POST", "/v2/models/race/infer", body=infer_body([2, 4]),
                          headers={"Host": "127.0.0.1:%d" % d.port, "Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                with lock:
                    counts[r.status] = counts.get(r.status, 0) + 1
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e))
                c = None

    def cycle():
        n = 0
        while time.monotonic() < stop:
            code = d.req("DELETE", "/v1/kernels/race")[0]
            code2 = d.req("POST", "/v1/kernels", doc)[0]
            if code not in (200, 404) or code2 not in (200, 201, 503):
                errors.append("unload %d, load %d" % (code, code2))
            n += 1
        counts["cycles"] = n

    threads = [threading.Thread(target=infer) for _ in range(4)] + [threading.Thread(target=cycle)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.seconds + 60)
    say("inference answers and cycles: %s; transport errors: %d" % (counts, len(errors)))
    need(not errors, "errors: %s" % errors[:3])
    bad = {k: v for k, v in counts.items() if k not in (200, 404, 503, "cycles")}
    need(not bad, "inference answered %s (want 200, or 404/503 while unloaded)" % bad)
    need(counts.get(200, 0) > 0 and counts.get("cycles", 0) > 10, "too little happened to judge: %s" % counts)
    return "%d inferences (%s) against %d unload/load cycles" % (sum(v for k, v in counts.items() if k != "cycles"),
                                                                 {k: v for k, v in counts.items() if k != "cycles"}, counts["cycles"])


ATTACKS = {
    "setup": attack_setup,
    "body-flood": attack_body_flood, "outputs": attack_outputs, "fifo-refs": attack_fifo_refs,
    "fifo-index": attack_fifo_index, "state-break": attack_state_break, "state-after-kill": attack_state_after_kill,
    "damaged": attack_damaged, "redact": attack_redact, "auth-read": attack_auth_read, "metrics-host": attack_metrics_host,
    "no-root": attack_no_root, "quote": attack_quote, "symlink": attack_symlink, "slash-ids": attack_slash_ids,
    "classify": attack_classify, "slow-seed": attack_slow_seed, "empty-event-id": attack_empty_event_id,
    "load-deadline": attack_load_deadline, "repeats": attack_repeats, "messages": attack_messages,
    "disconnects": attack_disconnects, "failed-loads": attack_failed_loads, "series": attack_series, "race": attack_race,
}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("dir")
    s = sub.add_parser("artifacts")
    s.add_argument("dir")
    s.add_argument("portfile")
    u = sub.add_parser("urza")
    u.add_argument("dir")
    u.add_argument("port", type=int)
    for name in ATTACKS:
        ap = sub.add_parser(name)
        ap.add_argument("--url", required=True)
        ap.add_argument("--pid", type=int)
        ap.add_argument("--token")
        ap.add_argument("--kdir")
        ap.add_argument("--state-dir")
        ap.add_argument("--art-port", type=int)
        ap.add_argument("--redis-port", type=int)
        ap.add_argument("--redis-db", type=int, default=0)
        ap.add_argument("--read-timeout", type=float, default=3)
        ap.add_argument("--budget-phase", action="store_true")
        ap.add_argument("--slow", type=int, default=15)
        ap.add_argument("--seconds", type=float, default=8)
    a = p.parse_args()
    if a.cmd == "kernels":
        return cmd_kernels(a)
    if a.cmd == "artifacts":
        return cmd_artifacts(a)
    if a.cmd == "urza":
        return cmd_urza(a)
    d = Daemon(a.url, token=a.token, pid=a.pid)
    try:
        summary = ATTACKS[a.cmd](d, a)
    except Fail as e:
        say("fail: %s" % e)
        sys.exit(1)
    except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
        say("fail: %s: %s" % (type(e).__name__, e))
        sys.exit(1)
    say("ok: %s" % summary)


if __name__ == "__main__":
    main()
