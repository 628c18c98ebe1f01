"""A fake Kasmina host for the client's unit tests: the SPEC's layer, seed
and layer-forward routes (SPEC-layers.md, #14 and #15) over HTTP/1.1 with
keep-alive, on loopback TCP or a Unix socket, in NumPy.

Its kernels are ``tanh(x·Wᵀ + b)`` (per sample ``[in]`` → ``[out]``),
computed in float64 from the float32 inputs, with their exact
vector-Jacobian product, so a test can compare the client's results with
PyTorch's autograd of the same arithmetic. It is strict where the real
host is: tensors only in Triton's binary extension (an input with JSON
``data`` is refused, so a client that sent one fails its test), sizes
checked, bytes used up exactly. Every request is recorded.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import socketserver
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

import numpy as np

LIVE = {"germinated", "training", "grafting"}
STATES = {"dormant", "germinated", "training", "grafting", "fossilized", "culled"}


@dataclass
class FakeKernel:
    """``tanh(x·Wᵀ + b)``: ``w`` is ``[out, in]``."""

    w: np.ndarray
    b: np.ndarray

    @property
    def input_shape(self) -> List[int]:
        return [self.w.shape[1]]

    @property
    def output_shape(self) -> List[int]:
        return [self.w.shape[0]]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x.astype(np.float64) @ self.w.T + self.b)

    def vjp(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        y = self.forward(x)
        return (g.astype(np.float64) * (1.0 - y * y)) @ self.w

    @staticmethod
    def random(rng: np.random.Generator, n_in: int, n_out: int) -> "FakeKernel":
        return FakeKernel(rng.standard_normal((n_out, n_in)) / np.sqrt(n_in), rng.standard_normal(n_out) * 0.1)


@dataclass
class Recorded:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes


@dataclass
class _Seed:
    idx: int
    seed_id: int
    state: str = "dormant"
    alpha: float = 0.0
    artifact_id: Optional[str] = None
    history: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class _Layer:
    name: str
    layer_id: int
    num_seeds: int
    input_shape: Optional[List[int]]
    output_shape: Optional[List[int]]
    seeds: List[_Seed] = field(default_factory=list)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def fnv(name: str) -> int:
    h = 2166136261
    for b in name.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h & 0x7FFFFFFF


class FakeHost:
    """Start with :meth:`start_tcp` or :meth:`start_unix` (both at once work);
    :meth:`stop` ends every listener."""

    def __init__(self, kernels: Dict[str, FakeKernel], token: Optional[str] = None, max_forwards: int = 16) -> None:
        self.kernels = kernels
        self.token = token
        self.max_forwards = max_forwards
        self.layers: Dict[str, _Layer] = {}
        self.forwards: "OrderedDict[str, Tuple[np.ndarray, List[Tuple[FakeKernel, float]], bool, float]]" = OrderedDict()
        self.requests: List[Recorded] = []
        self.connections = 0
        self.answer_json_outputs = False  # answer inference with JSON data (a broken host)
        # Serve system shared memory as a host before layer outputs could go
        # there: inputs from regions, a layer output named in one is 501.
        self.shared_memory = False
        self.regions: Dict[str, "mmap.mmap"] = {}
        self.drop_after_answer = False  # close each connection after answering, without saying so
        self.next_seed_id = 1
        self.lock = threading.RLock()
        self._servers: List[socketserver.BaseServer] = []
        self._threads: List[threading.Thread] = []
        self._conns: List[socket.socket] = []

    # -- listeners ---------------------------------------------------------

    def _serve(self, srv: socketserver.BaseServer) -> None:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        self._servers.append(srv)
        self._threads.append(t)

    def start_tcp(self) -> str:
        srv = _TCPServer(("127.0.0.1", 0), _handler(self))
        srv.fake = self  # type: ignore[attr-defined]
        self._serve(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    def start_unix(self, path: str) -> str:
        srv = _UnixServer(path, _handler(self))
        srv.fake = self  # type: ignore[attr-defined]
        os.chmod(path, 0o660)
        self._serve(srv)
        return f"unix://{path}"

    def stop(self) -> None:
        """Stops listening and drops every open connection: the host is down."""
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        with self.lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=20)
        self._servers.clear()
        self._threads.clear()

    def infer_requests(self) -> List[Recorded]:
        return [r for r in self.requests if r.path.endswith("/infer")]

    # -- routes ------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        with self.lock:
            self.requests.append(Recorded(method, path, headers, body))
        try:
            if path == "/v2/health/ready":
                return _json(200, {"ready": True})
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                raise HTTPError(401, "missing or wrong bearer token")
            parts = [unquote(p) for p in path.strip("/").split("/")]
            with self.lock:
                if self.shared_memory and parts[:2] == ["v2", "systemsharedmemory"] and method == "POST":
                    return self._shm(parts[2:], body)
                if parts[:2] == ["v1", "layers"]:
                    return self._layers(method, parts[2:], body)
                if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer" and method == "POST":
                    return self._infer(parts[2], headers, body)
            raise HTTPError(404, f"no route {method} {path}")
        except HTTPError as e:
            return _json(e.status, {"error": e.message})

    def _layer(self, name: str) -> _Layer:
        if name not in self.layers:
            raise HTTPError(404, f'no layer named "{name}"')
        return self.layers[name]

    def _view(self, layer: _Layer, seeds: bool) -> Dict[str, Any]:
        v: Dict[str, Any] = {"layer_name": layer.name, "layer_id": layer.layer_id, "num_seeds": layer.num_seeds,
                             "input_shape": layer.input_shape, "output_shape": layer.output_shape, "declared_by": "http"}
        if seeds:
            v["seeds"] = [{"seed_idx": s.idx, "seed_id": s.seed_id, "state": s.state, "alpha": s.alpha,
                           "kernel": s.artifact_id, "artifact_id": s.artifact_id, "history": s.history}
                          for s in layer.seeds]
        return v

    def _new_seed(self, idx: int) -> _Seed:
        self.next_seed_id += 1
        return _Seed(idx=idx, seed_id=self.next_seed_id)

    def _layers(self, method: str, rest: List[str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        if not rest:
            if method != "GET":
                raise HTTPError(405, f"{method} not allowed")
            return _json(200, {"layers": [self._view(l, False) for l in sorted(self.layers.values(), key=lambda l: l.layer_id)]})
        name = rest[0]
        if len(rest) == 1:
            if method == "GET":
                return _json(200, self._view(self._layer(name), True))
            if method == "DELETE":
                self._layer(name)
                del self.layers[name]
                return _json(200, {"layer_name": name, "state": "retired"})
            if method == "PUT":
                return self._declare(name, _doc(body))
            raise HTTPError(405, f"{method} not allowed")
        if len(rest) == 4 and rest[1] == "seeds":
            layer = self._layer(name)
            try:
                idx = int(rest[2])
            except ValueError:
                raise HTTPError(400, f"seed_idx {rest[2]!r} is not an integer") from None
            if not 0 <= idx < layer.num_seeds:
                raise HTTPError(400, f"seed_idx {idx} is out of range: layer \"{name}\" has {layer.num_seeds} seeds")
            return self._seed(layer, layer.seeds[idx], method, rest[3], body)
        raise HTTPError(404, "no such route")

    def _declare(self, name: str, doc: Dict[str, Any]) -> Tuple[int, Dict[str, str], bytes]:
        n = doc.get("num_seeds")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 64:
            raise HTTPError(400, f"num_seeds {n!r}: want an integer in 1..64")
        layer_id = doc.get("layer_id", fnv(name))
        ins, outs = doc.get("input_shape"), doc.get("output_shape")
        if name in self.layers:
            l = self.layers[name]
            if l.layer_id != layer_id:
                raise HTTPError(409, f"layer \"{name}\" has layer_id {l.layer_id}, not {layer_id}")
            if n < l.num_seeds and any(s.artifact_id for s in l.seeds[n:]):
                raise HTTPError(409, f"layer \"{name}\": a seed at or above {n} is occupied")
            while len(l.seeds) < n:
                l.seeds.append(self._new_seed(len(l.seeds)))
            l.num_seeds = max(n, l.num_seeds)
            l.input_shape = ins if ins is not None else l.input_shape
            l.output_shape = outs if outs is not None else l.output_shape
            return _json(200, self._view(l, False))
        l = _Layer(name, layer_id, n, ins, outs)
        l.seeds = [self._new_seed(i) for i in range(n)]
        self.layers[name] = l
        return _json(201, self._view(l, False))

    def _seed(self, layer: _Layer, seed: _Seed, method: str, what: str, body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        base = {"layer_name": layer.name, "seed_idx": seed.idx, "command_event_id": "", "timestamp": 0.0}
        if what == "kernel" and method == "POST":
            art = _doc(body).get("artifact_id")
            if not isinstance(art, str) or not art:
                raise HTTPError(400, "artifact_id: want a non-empty string")
            k = self.kernels.get(art)
            if k is None:
                raise HTTPError(404, f'artifact "{art}" not found')
            if layer.input_shape is not None and layer.input_shape != k.input_shape or \
                    layer.output_shape is not None and layer.output_shape != k.output_shape:
                raise HTTPError(422, f"kernel {art} takes {k.input_shape} and gives {k.output_shape}; layer \"{layer.name}\" "
                                     f"is declared {layer.input_shape} → {layer.output_shape}")
            seed.artifact_id = art
            if seed.state == "dormant":
                seed.state = "germinated"
            return _json(200, dict(base, event_type="kernel_load_success", artifact_id=art))
        if what == "kernel" and method == "DELETE":
            if seed.artifact_id is not None:
                seed.history.append({"seed_id": seed.seed_id, "artifact_id": seed.artifact_id, "state": "culled"})
                fresh = self._new_seed(seed.idx)
                fresh.history = seed.history
                layer.seeds[seed.idx] = fresh
            return _json(200, dict(base, event_type="kernel_unload_success"))
        if what == "state" and method == "PUT":
            st = _doc(body).get("state")
            if st not in STATES:
                raise HTTPError(400, f"state {st!r} is not a seed state")
            old, seed.state = seed.state, st
            return _json(200, dict(base, event_type="seed_state_changed", from_state=old, to_state=st))
        if what == "alpha" and method == "PUT":
            a = _doc(body).get("alpha")
            if not isinstance(a, (int, float)) or isinstance(a, bool):
                raise HTTPError(400, f"alpha {a!r} is not a number")
            clamped = not 0.0 <= a <= 1.0
            seed.alpha = min(1.0, max(0.0, float(a)))
            return _json(200, dict(base, event_type="seed_alpha_changed", alpha=seed.alpha, clamped=clamped))
        raise HTTPError(405, f"{method} not allowed on {what}")

    def _shm(self, rest: List[str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        if len(rest) == 3 and rest[0] == "region" and rest[2] == "register":
            doc = _doc(body)
            path = "/dev/shm/" + doc["key"].lstrip("/")
            try:
                with open(path, "r+b") as f:
                    self.regions[rest[1]] = mmap.mmap(f.fileno(), doc["byte_size"], offset=doc.get("offset", 0))
            except OSError as e:
                raise HTTPError(404, f"key {doc['key']!r}: {e}") from None
            return _json(200, {})
        if len(rest) == 3 and rest[0] == "region" and rest[2] == "unregister":
            m = self.regions.pop(rest[1], None)
            if m is not None:
                m.close()
            return _json(200, {})
        raise HTTPError(404, "no such route")

    def _infer(self, name: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        layer = self._layer(name)
        hl = headers.get("inference-header-content-length")
        if hl is None and self.shared_memory:
            hl = str(len(body))  # a JSON-only request: every input in a region
        if hl is None:
            raise HTTPError(400, "this host takes tensors in the binary extension only: no Inference-Header-Content-Length")
        if not hl.isdigit() or not 0 < int(hl) <= len(body):
            raise HTTPError(400, f"Inference-Header-Content-Length {hl!r} does not fit the body")
        head = json.loads(body[: int(hl)])
        for i, o in enumerate(head.get("outputs") or []):
            if "shared_memory_region" in (o.get("parameters") or {}):
                raise HTTPError(501, f"outputs[{i}].parameters.shared_memory_region: a layer's outputs come in the answer, not in shared memory")
        off = int(hl)
        tensors: Dict[str, np.ndarray] = {}
        for inp in head.get("inputs", []):
            n = inp.get("name")
            if n not in ("input", "default", "grad_output"):
                raise HTTPError(400, f"input {n!r}: want input, default or grad_output")
            if "data" in inp:
                raise HTTPError(400, f"input {n!r} has JSON data: this host takes the binary extension only")
            if inp.get("datatype") != "FP32":
                raise HTTPError(400, f"input {n!r}: datatype {inp.get('datatype')!r}, want FP32")
            shape = inp["shape"]
            ip = inp.get("parameters", {})
            if self.shared_memory and "shared_memory_region" in ip:
                region = self.regions[ip["shared_memory_region"]]
                count = int(np.prod(shape))
                tensors[n] = np.frombuffer(region, dtype="<f4", count=count,
                                           offset=ip.get("shared_memory_offset", 0)).reshape(shape).copy()
                continue
            size = ip.get("binary_data_size")
            if size != int(np.prod(shape)) * 4:
                raise HTTPError(400, f"input {n!r}: binary_data_size {size} ≠ {int(np.prod(shape)) * 4}")
            if off + size > len(body):
                raise HTTPError(400, f"input {n!r}: binary bytes missing")
            tensors[n] = np.frombuffer(body, dtype="<f4", count=int(np.prod(shape)), offset=off).reshape(shape)
            off += size
        if off != len(body):
            raise HTTPError(400, f"{len(body) - off} binary bytes left over")
        params = head.get("parameters", {})
        outputs: List[Tuple[str, np.ndarray]] = []
        rparams: Dict[str, Any] = {}
        x = tensors.get("input")
        if x is not None:
            active = self._active(layer)
            default = tensors.get("default")
            for k, _ in active:
                if list(x.shape[1:]) != k.input_shape:
                    raise HTTPError(400, f"input shape {list(x.shape[1:])} is not the kernel's {k.input_shape}")
            total = sum(a for _, a in active)
            if active:
                oshape = active[0][0].output_shape
            elif default is not None:
                oshape = list(default.shape[1:])
            elif layer.output_shape is not None:
                oshape = layer.output_shape
            else:
                raise HTTPError(400, "no active seed, no default and no declared output shape")
            out = np.zeros([x.shape[0]] + oshape, np.float64)
            if default is not None:
                if list(default.shape) != list(out.shape):
                    raise HTTPError(400, f"default shape {list(default.shape)} is not the output's {list(out.shape)}")
                out += (1.0 - total) * default.astype(np.float64)
            for k, a in active:
                out += a * k.forward(x)
            outputs.append(("output", out.astype(np.float32)))
            rparams.update(default_applied=default is not None, alpha_total=total,
                           seeds=json.dumps([{"seed_idx": i, "alpha": a, "kernel": art} for (i, art, a) in self._active_ids(layer)]))
            fwd = (x.copy(), active, default is not None, total)
            if params.get("keep_forward"):
                fid = uuid.uuid4().hex
                self.forwards[fid] = fwd
                while len(self.forwards) > self.max_forwards:
                    self.forwards.popitem(last=False)
                rparams["forward_id"] = fid
        g = tensors.get("grad_output")
        if g is not None:
            if x is None:
                fid = params.get("forward_id")
                if fid not in self.forwards:
                    raise HTTPError(404, f'forward_id "{fid}" is unknown, evicted or expired')
                fwd = self.forwards[fid]
            xk, active, had_default, total = fwd
            gi = np.zeros(xk.shape, np.float64)
            for k, a in active:
                gi = gi + a * k.vjp(xk, g)
            outputs.append(("grad_input", gi.astype(np.float32)))
            if had_default:
                outputs.append(("grad_default", ((1.0 - total) * g.astype(np.float64)).astype(np.float32)))
            rparams.setdefault("alpha_total", total)
        if not outputs:
            raise HTTPError(400, "the request has neither input nor grad_output")
        binary = params.get("binary_data_output") and not self.answer_json_outputs
        return _infer_answer(name, outputs, rparams, bool(binary))

    def _active_ids(self, layer: _Layer) -> List[Tuple[int, str, float]]:
        live = [s for s in layer.seeds if s.artifact_id and (s.state in LIVE or s.state == "fossilized" and s.alpha >= 1.0)]
        total = sum(s.alpha for s in live)
        scale = 1.0 / total if total > 1.0 else 1.0
        return [(s.idx, s.artifact_id, s.alpha * scale) for s in live]  # type: ignore[misc]

    def _active(self, layer: _Layer) -> List[Tuple[FakeKernel, float]]:
        return [(self.kernels[art], a) for (_, art, a) in self._active_ids(layer)]


def _doc(body: bytes) -> Dict[str, Any]:
    try:
        d = json.loads(body or b"{}")
    except ValueError as e:
        raise HTTPError(400, f"body is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise HTTPError(400, "body is not a JSON object")
    return d


def _json(status: int, doc: Any) -> Tuple[int, Dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()


def _infer_answer(name: str, outputs: List[Tuple[str, np.ndarray]], params: Dict[str, Any],
                  binary: bool) -> Tuple[int, Dict[str, str], bytes]:
    if not binary:
        doc = {"model_name": name, "model_version": "1", "parameters": params,
               "outputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.ravel().tolist()}
                           for n, a in outputs]}
        return _json(200, doc)
    doc = {"model_name": name, "model_version": "1", "parameters": params,
           "outputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape),
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in outputs]}
    head = json.dumps(doc).encode()
    body = head + b"".join(np.ascontiguousarray(a, "<f4").tobytes() for _, a in outputs)
    return 200, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}, body


def _handler(fake: FakeHost) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            if self.connection.family != socket.AF_UNIX:  # headers and body go out in two writes
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with fake.lock:
                fake.connections += 1
                fake._conns.append(self.connection)

        def _do(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, hdrs, out = fake.handle(self.command, self.path, headers, body)
            self.send_response(status)
            for k, v in hdrs.items():
                self.send_header(k, v)
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            if fake.drop_after_answer:
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = _do

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Quiet:
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a connection dropped by stop(): the test sees the client's side of it


class _TCPServer(_Quiet, ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # no reverse DNS look-up of 127.0.0.1
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


class _UnixServer(_Quiet, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> Tuple[socket.socket, Any]:
        sock, _ = self.socket.accept()
        return sock, ("unix", 0)
