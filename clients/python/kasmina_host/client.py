"""``Client``: the Kasmina host's HTTP API from Python (standard library + NumPy)."""

from __future__ import annotations

import http.client
import json
import math
import os
import select
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit

import numpy as np

from .errors import KasminaHostError, KasminaHostUnavailable, KasminaProtocolError
from .shm import Region, RegionPool, aligned
from .wire import (FP32, HEADER_LENGTH, InferResponse, SharedOutputReader, as_fp32, decode_response,
                   encode_request, encode_shared_request)

#: Where ``Client.from_env`` and the torch layers look when given no client.
DEFAULT_URL = "http://127.0.0.1:8470"

ArrayLike = Any  # np.ndarray, a torch.Tensor (moved to the CPU), nested lists


def stable_layer_id(layer_name: str) -> int:
    """The layer id a host gives ``layer_name`` when none is declared:
    FNV-1a 32-bit of its UTF-8 bytes, masked to 31 bits (the ``layer_id``
    of the layer's health signals)."""
    h = 2166136261
    for b in layer_name.encode("utf-8"):
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h & 0x7FFFFFFF


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a Unix domain socket."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class ForwardResult:
    """What a layer forward returned.

    ``output`` is the blend ``(1 − A)·default + Σ αᵢ·kᵢ(x)``;
    ``forward_id`` is set when the forward was kept for a later backward;
    ``seeds`` lists the contributing seeds (``seed_idx``, ``alpha``,
    ``kernel``) and ``alpha_total`` is their total weight as the host
    reports it; ``default_applied`` is False when no default was sent.
    """

    output: np.ndarray
    forward_id: Optional[str] = None
    seeds: List[Dict[str, Any]] = field(default_factory=list)
    alpha_total: Optional[float] = None
    default_applied: Optional[bool] = None
    parameters: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BackwardResult:
    """What a layer backward returned: ``grad_input`` (∂loss/∂x),
    ``grad_default`` (∂loss/∂default, ``(1 − A)·grad_output``; None when
    the forward had no default), and ``output`` when the call did the
    forward too."""

    grad_input: np.ndarray
    grad_default: Optional[np.ndarray] = None
    output: Optional[np.ndarray] = None
    seeds: List[Dict[str, Any]] = field(default_factory=list)
    alpha_total: Optional[float] = None
    parameters: Dict[str, Any] = field(default_factory=dict)


def _seeds_param(params: Mapping[str, Any], status: int) -> List[Dict[str, Any]]:
    raw = params.get("seeds")
    if raw is None:
        return []
    if isinstance(raw, str):  # KServe parameters are scalars: the host JSON-encodes the list
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise KasminaProtocolError(status, f"response parameter seeds is not JSON: {e}") from None
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise KasminaProtocolError(status, f"response parameter seeds is not a list of objects: {raw!r}")
    return raw


def _alpha_total(params: Mapping[str, Any]) -> Optional[float]:
    a = params.get("alpha_total")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(a)
    return None


class Client:
    """The Kasmina host's HTTP API over TCP (``http://host:port``,
    ``https://...``) or a Unix domain socket (``unix:///path/to.sock``).

    Tensors travel as Triton's binary tensor data extension (FP32,
    little-endian) or through system shared memory (``shared_memory``).
    Every refusal raises :class:`KasminaHostError` with the
    host's status and message; a host that cannot be reached (or drops the
    connection, or does not answer within ``timeout`` seconds) raises
    :class:`KasminaHostUnavailable`, a ``ConnectionError``. Nothing ever
    comes back as zeros in place of an answer.

    Connections are kept alive and reused. A ``Client`` is thread-safe:
    each request takes an idle connection from a small pool (or opens
    one) and puts it back when the answer has been read, so concurrent
    calls from several threads each use their own connection. An idle
    connection the host has closed (its idle timeout) is noticed before
    reuse and replaced. If one closes in the instant of reuse, before any
    answer arrived, the request is sent once more on a fresh connection,
    except ``set_seed_state`` (a transition applied once may be refused
    the second time); the others can be repeated safely (loads and alphas
    are idempotent, a repeated kept forward only keeps one more).

    ``token`` is sent as ``Authorization: Bearer`` on every request (the
    host needs it on write routes, and on reads with ``--auth-read``); on
    a Unix socket the host asks for none.

    ``shared_memory``: whether tensors travel through system shared memory
    (:mod:`kasmina_host.shm`) instead of the socket. ``None`` (the default)
    tries it on the first tensor call when the host is on this node (a
    Unix socket, or a loopback address) and goes on over the socket if the
    host cannot open this process's shared memory (another ``/dev/shm``,
    another user, the extension turned off); :attr:`shared_memory_error`
    then says why. ``True`` insists (a refusal raises), ``False`` never
    tries. Inputs go to shared memory, and so do the outputs whose sizes
    are known: from the inputs' shapes (a layer's output has the shape of
    ``default`` or ``grad_output``, ``grad_input`` that of ``x``), else from
    the model's metadata (fetched once per model); the others come in the
    answer.
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 60.0, *,
                 max_idle: int = 4, shared_memory: Optional[bool] = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.timeout = timeout
        self._max_idle = max_idle
        self._unix_path: Optional[str] = None
        if parts.scheme == "unix":
            path = (parts.netloc + parts.path) if parts.netloc else parts.path
            if not path:
                raise ValueError(f"url {url!r}: a unix URL needs a socket path, e.g. unix:///run/kasmina.sock")
            self._unix_path = path
            self._prefix = ""
        elif parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError(f"url {url!r} has no host")
            self._scheme = parts.scheme
            self._host = parts.hostname
            self._port = parts.port
            self._prefix = parts.path.rstrip("/")
        else:
            raise ValueError(f"url {url!r}: scheme {parts.scheme!r} is not http, https or unix")
        self._headers: Dict[str, str] = {}
        if token is not None:
            if token == "" or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in token):
                raise ValueError("token is blank or holds whitespace or control characters")
            self._headers["Authorization"] = f"Bearer {token}"
        self._token = token
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.connections_opened = 0  #: connections opened so far (keep-alive reuse keeps this low)
        if shared_memory is None:
            shared_memory = None if self._on_this_node() else False
        self._shm_wanted = shared_memory
        self._shm_pool: Optional[RegionPool] = None
        self._shm_pid = 0  # the process the pool's regions belong to
        self._shm_failed = False
        self._shm_layer_outputs = True  # False once a host refused them (older than this client)
        self._shm_lock = threading.Lock()
        #: Why shared memory is not in use after an attempt (None when it is, or was not tried).
        self.shared_memory_error: Optional[str] = None
        self._output_shapes_cache: Dict[str, Dict[str, Tuple[int, ...]]] = {}

    @classmethod
    def from_env(cls) -> "Client":
        """A client for ``$KASMINA_HOST_URL`` (default ``http://127.0.0.1:8470``)
        with the token in ``$KASMINA_HOST_TOKEN``, if set."""
        return cls(os.environ.get("KASMINA_HOST_URL", DEFAULT_URL), token=os.environ.get("KASMINA_HOST_TOKEN") or None)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # A Client is shared, not copied: modules that hold one can be deep-copied
    # and pickled (torch.save(model)). A pickle holds the URL, never the
    # token: the unpickled client takes $KASMINA_HOST_TOKEN.
    def __deepcopy__(self, memo: Dict[int, Any]) -> "Client":
        return self

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_unpickle_client, (self.url, self.timeout))

    def close(self) -> None:
        """Closes the idle connections (a later request opens a new one) and
        gives back the shared memory regions (a later call makes new ones)."""
        with self._shm_lock:
            pool, self._shm_pool = self._shm_pool, None
        if pool is not None and self._shm_pid == os.getpid():
            pool.close()
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _on_this_node(self) -> bool:
        if self._unix_path is not None:
            return True
        host = self._host.lower()
        return host in ("localhost", "::1") or host.startswith("127.")

    @property
    def shared_memory(self) -> bool:
        """Whether tensors travel through shared memory (after the first
        tensor call has tried it)."""
        return self._shm_pool is not None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport ---------------------------------------------------------

    def _new_connection(self) -> http.client.HTTPConnection:
        with self._lock:
            self.connections_opened += 1
        if self._unix_path is not None:
            return _UnixHTTPConnection(self._unix_path, self.timeout)
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _take(self) -> Tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new_connection(), False
            if not _dropped(conn):
                return conn, True
            conn.close()  # the host closed it while it was idle

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 headers: Optional[Mapping[str, str]] = None,
                 retry: bool = True) -> Tuple[int, http.client.HTTPMessage, bytearray]:
        """Sends one request; returns status, headers and the whole body.

        ``retry``: whether the request may be sent a second time when a
        reused connection turns out closed before any answer arrived."""
        hdrs = dict(self._headers)
        if headers:
            hdrs.update(headers)
        if body is None and method in ("POST", "PUT"):
            body = b""
        target = self._prefix + path
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                conn.request(method, target, body=body, headers=hdrs)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
                conn.close()
                if reused and retry and attempt == 0:
                    continue  # the host closed the idle connection: once more on a fresh one
                raise KasminaHostUnavailable(f"kasmina-host at {self.url} closed the connection: {e}") from e
            except socket.timeout as e:
                conn.close()
                raise KasminaHostUnavailable(f"kasmina-host at {self.url} did not answer {method} {path} within {self.timeout}s") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise KasminaHostUnavailable(f"cannot reach kasmina-host at {self.url}: {e}") from e
            try:
                data = self._read_body(resp)
            except socket.timeout as e:
                conn.close()
                raise KasminaHostUnavailable(f"kasmina-host at {self.url} stopped sending the answer to {method} {path}") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise KasminaHostUnavailable(f"kasmina-host at {self.url} broke off the answer to {method} {path}: {e}") from e
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")

    @staticmethod
    def _read_body(resp: http.client.HTTPResponse) -> bytearray:
        n = resp.length
        if n is None:
            return bytearray(resp.read())
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = resp.readinto(view[got:])
            if not k:
                raise http.client.IncompleteRead(bytes(buf[:got]), n - got)
            got += k
        return buf

    @staticmethod
    def _error(status: int, headers: http.client.HTTPMessage, data: bytearray) -> KasminaHostError:
        text = bytes(data[:4096]).decode("utf-8", "replace")
        message, error_class, body = text.strip(), None, None
        try:
            body = json.loads(bytes(data))
        except ValueError:
            pass
        if isinstance(body, dict):
            if isinstance(body.get("error"), str):
                message = body["error"]
            elif isinstance(body.get("failure_reason"), str):
                message = body["failure_reason"]
            if isinstance(body.get("error_class"), str):
                error_class = body["error_class"]
        if not message:
            message = http.client.responses.get(status, "error")
        return KasminaHostError(status, message, error_class=error_class, body=body)

    def _json(self, method: str, path: str, doc: Any = None, retry: bool = True) -> Any:
        body = None
        headers = {}
        if doc is not None:
            body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        status, hdrs, data = self._request(method, path, body, headers, retry)
        if not 200 <= status < 300:
            raise self._error(status, hdrs, data)
        try:
            return json.loads(bytes(data)) if data else None
        except ValueError as e:
            raise KasminaProtocolError(status, f"{method} {path}: the answer is not JSON: {e}") from None

    def _outcome(self, method: str, path: str, doc: Any = None, retry: bool = True) -> Dict[str, Any]:
        out = self._json(method, path, doc, retry)
        if not isinstance(out, dict):
            raise KasminaProtocolError(200, f"{method} {path}: the outcome is not a JSON object")
        event = out.get("event_type")
        if isinstance(event, str) and (event.endswith("_failure") or event == "command_failed"):
            raise KasminaHostError(200, str(out.get("failure_reason") or event),
                                   error_class=out.get("error_class"), body=out)
        return out

    # -- health ------------------------------------------------------------

    def ready(self) -> bool:
        """True when the host answers ``/v2/health/ready`` with 200, False
        for 503 (starting); raises when it cannot be reached."""
        status, hdrs, data = self._request("GET", "/v2/health/ready")
        if status == 200:
            return True
        if status == 503:
            return False
        raise self._error(status, hdrs, data)

    # -- layers and seeds --------------------------------------------------

    def declare_layer(self, name: str, num_seeds: int = 4, input_shape: Optional[Sequence[int]] = None,
                      output_shape: Optional[Sequence[int]] = None, layer_id: Optional[int] = None) -> Dict[str, Any]:
        """``PUT /v1/layers/{name}``: declares the layer (or confirms, grows it);
        returns the layer view. Shapes are per sample, without the batch."""
        doc: Dict[str, Any] = {"num_seeds": num_seeds}
        if layer_id is not None:
            doc["layer_id"] = layer_id
        if input_shape is not None:
            doc["input_shape"] = [int(d) for d in input_shape]
        if output_shape is not None:
            doc["output_shape"] = [int(d) for d in output_shape]
        return self._json("PUT", _layer_path(name), doc)

    def retire_layer(self, name: str) -> Dict[str, Any]:
        """``DELETE /v1/layers/{name}``: unloads its kernels and forgets it."""
        return self._json("DELETE", _layer_path(name))

    def layers(self) -> List[Dict[str, Any]]:
        """``GET /v1/layers``: every declared layer, by layer_id."""
        out = self._json("GET", "/v1/layers")
        if not isinstance(out, dict) or not isinstance(out.get("layers"), list):
            raise KasminaProtocolError(200, "GET /v1/layers: no layers list in the answer")
        return out["layers"]

    def layer(self, name: str) -> Dict[str, Any]:
        """``GET /v1/layers/{name}``: the layer with one entry per seed slot."""
        return self._json("GET", _layer_path(name))

    def load_kernel(self, layer_name: str, seed_idx: int, artifact_id: str) -> Dict[str, Any]:
        """Loads a kernel into a seed slot and returns the host's outcome.

        ``artifact_id``: a kernel id (Urza), a URL, or a path relative to the
        host's ``--kernels`` directory such as ``CASE/kernel.safetensors``.
        A dormant slot germinates; an occupied one swaps its kernel. The
        seed's alpha is left as it was (0 for a fresh slot).
        """
        return self._outcome("POST", _seed_path(layer_name, seed_idx, "kernel"), {"artifact_id": artifact_id})

    def unload_kernel(self, layer_name: str, seed_idx: int) -> Dict[str, Any]:
        """Culls the slot's seed (a new dormant seed takes the slot)."""
        return self._outcome("DELETE", _seed_path(layer_name, seed_idx, "kernel"))

    def set_seed_state(self, layer_name: str, seed_idx: int, state: str) -> Dict[str, Any]:
        """Moves the seed through its lifecycle (``germinated``, ``training``,
        ``grafting``, ``fossilized``, ``culled``, ``dormant``)."""
        # Not sent twice: a transition the host applied once may be refused the second time.
        return self._outcome("PUT", _seed_path(layer_name, seed_idx, "state"), {"state": state}, retry=False)

    def set_alpha(self, layer_name: str, seed_idx: int, alpha: float) -> Dict[str, Any]:
        """Sets the seed's blend weight; the host clamps it to [0, 1] and the
        outcome says ``clamped``. NaN and infinities are refused here."""
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"alpha {alpha} is not a finite number")
        return self._outcome("PUT", _seed_path(layer_name, seed_idx, "alpha"), {"alpha": alpha})

    # -- shared memory -----------------------------------------------------

    def _register_region(self, region: Region) -> None:
        self._json("POST", f"/v2/systemsharedmemory/region/{quote(region.name, safe='')}/register",
                   {"key": region.key, "offset": 0, "byte_size": region.size})

    def _unregister_region(self, name: str) -> None:
        self._json("POST", f"/v2/systemsharedmemory/region/{quote(name, safe='')}/unregister")

    def _new_pool(self) -> RegionPool:
        """A region pool that holds this client weakly, so that a client
        dropped without close() is collected: its regions are then
        unregistered (over a connection of their own) and removed, as
        they are at exit for a client still alive."""
        ref = weakref.ref(self)
        url, token, timeout = self.url, self._token, min(self.timeout, 2.0)

        def register(region: Region) -> None:
            c = ref()
            if c is None:
                raise KasminaHostUnavailable("the client was closed")
            c._register_region(region)

        def unregister(name: str) -> None:
            c = ref()
            if c is not None:
                c._unregister_region(name)
                return
            c = Client(url, token=token, timeout=timeout, shared_memory=False)
            try:
                c._unregister_region(name)
            finally:
                c.close()

        pool = RegionPool(register, unregister, max_idle=self._max_idle)
        weakref.finalize(self, pool.close)
        return pool

    def _regions(self) -> Optional[RegionPool]:
        """The pool of shared memory regions, set up (and tried: the host
        registers one) on first use; None when tensors go over the socket."""
        if self._shm_wanted is False or self._shm_failed:
            return None
        pool = self._shm_pool
        if pool is not None and self._shm_pid == os.getpid():
            return pool
        with self._shm_lock:
            if self._shm_pool is not None and self._shm_pid == os.getpid():
                return self._shm_pool
            # None yet, or the parent's (this process was forked): the
            # parent's regions are left to it.
            pool = self._new_pool()
            try:
                pool.give_back(pool.take(0))
            except KasminaHostUnavailable:
                raise
            except (KasminaHostError, OSError) as e:
                if self._shm_wanted:
                    raise
                self._shm_failed = True
                self.shared_memory_error = str(e)
                return None
            self._shm_pool, self._shm_pid = pool, os.getpid()
            self.shared_memory_error = None
            return pool

    def _output_shapes(self, model: str, refresh: bool = False) -> Dict[str, Tuple[int, ...]]:
        """The per-sample shapes of a model's FP32 outputs whose dimensions
        its metadata gives (all but the batch), by name; fetched once."""
        if not refresh and model in self._output_shapes_cache:
            return self._output_shapes_cache[model]
        meta = self._json("GET", f"/v2/models/{quote(model, safe='')}")
        shapes: Dict[str, Tuple[int, ...]] = {}
        outs = meta.get("outputs") if isinstance(meta, dict) else None
        for o in outs if isinstance(outs, list) else []:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str) or o.get("datatype") != "FP32":
                continue
            dims = o.get("shape")
            if isinstance(dims, list) and len(dims) >= 1 and all(isinstance(d, int) and not isinstance(d, bool) for d in dims) \
                    and all(d >= 0 for d in dims[1:]):
                shapes[o["name"]] = tuple(dims[1:])
        self._output_shapes_cache[model] = shapes
        return shapes

    # -- inference ---------------------------------------------------------

    def infer(self, model: str, inputs: Mapping[str, ArrayLike],
              parameters: Optional[Mapping[str, Any]] = None) -> InferResponse:
        """``POST /v2/models/{model}/infer`` with every input as FP32 and
        every output asked for in binary, or through shared memory (see
        the class). Inputs are sent in the order given."""
        arrays = [(name, as_fp32(name, value)) for name, value in inputs.items()]
        return self._infer(model, arrays, parameters, None)

    def _infer(self, model: str, arrays: List[Tuple[str, np.ndarray]], parameters: Optional[Mapping[str, Any]],
               outputs: Optional[Sequence[str]]) -> InferResponse:
        """One inference. ``outputs`` names the outputs the call produces
        (a layer's), or None for a model whose metadata lists one output
        (a kernel's); through shared memory they go to the region where
        their sizes are known."""
        pool = self._regions()
        if pool is None:
            return self._infer_socket(model, arrays, parameters)
        try:
            return self._infer_shared(pool, model, arrays, parameters, outputs)
        except KasminaHostError as e:
            if e.status == 501 and outputs is not None and self._shm_layer_outputs:
                # A host from before a layer's outputs could go to shared
                # memory: from now on they come in the answer.
                self._shm_layer_outputs = False
                return self._infer_shared(pool, model, arrays, parameters, outputs)
            # A kernel swapped for one with other shapes: a region was too
            # small. Once more with fresh metadata.
            if e.status == 400 and model in self._output_shapes_cache:
                old = self._output_shapes_cache[model]
                if self._output_shapes(model, refresh=True) != old:
                    return self._infer_shared(pool, model, arrays, parameters, outputs)
            raise

    def _infer_socket(self, model: str, arrays: List[Tuple[str, np.ndarray]],
                      parameters: Optional[Mapping[str, Any]]) -> InferResponse:
        body, hlen = encode_request(arrays, parameters)
        status, hdrs, data = self._request(
            "POST", f"/v2/models/{quote(model, safe='')}/infer", body,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(hlen)})
        if not 200 <= status < 300:
            raise self._error(status, hdrs, data)
        return decode_response(data, hdrs.get(HEADER_LENGTH), status)

    def _shared_output_shapes(self, model: str, arrays: List[Tuple[str, np.ndarray]],
                              outputs: Optional[Sequence[str]]) -> List[Tuple[str, Optional[Tuple[int, ...]]]]:
        """The outputs a call asks for, each with its whole shape when it is
        known (then it goes to the region), else None (it comes in the answer)."""
        given = dict(arrays)
        batch = next((a.shape[0] for a in given.values() if a.ndim >= 1), None)
        if batch is None:
            return [(n, None) for n in outputs or ()]
        if outputs is None:  # a kernel: its one output, from the metadata
            meta = self._output_shapes(model)
            if set(meta) != {"output"}:
                return []
            return [("output", (batch,) + meta["output"])]
        if not self._shm_layer_outputs:
            return [(n, None) for n in outputs]
        # A layer: output and grad_default have the output's shape (that of
        # default or grad_output when given), grad_input the input's.
        known: Dict[str, Tuple[int, ...]] = {}
        for src, names in (("default", ("output", "grad_default")), ("grad_output", ("output", "grad_default")),
                           ("input", ("grad_input",))):
            if src in given:
                for n in names:
                    known[n] = tuple(given[src].shape)
        out: List[Tuple[str, Optional[Tuple[int, ...]]]] = []
        for n in outputs:
            if n not in known:
                meta = self._output_shapes(model)
                if n in meta:
                    known[n] = (batch,) + meta[n]
            out.append((n, known.get(n)))
        return out

    def _infer_shared(self, pool: RegionPool, model: str, arrays: List[Tuple[str, np.ndarray]],
                      parameters: Optional[Mapping[str, Any]], outputs: Optional[Sequence[str]]) -> InferResponse:
        """One inference with the inputs, and the outputs whose sizes are
        known, in a region."""
        wanted = self._shared_output_shapes(model, arrays, outputs)
        offsets, end = [], 0
        for _, arr in arrays:
            offsets.append(end)
            end += aligned(arr.nbytes)
        placed: List[Tuple[str, Optional[Tuple[int, int]]]] = []  # (name, (offset, bytes) or None)
        for name, shape in wanted:
            if shape is None:
                placed.append((name, None))
                continue
            size = 4 * int(np.prod(shape, dtype=np.int64))
            if size == 0:
                placed.append((name, None))
                continue
            placed.append((name, (end, size)))
            end += aligned(size)
        region = pool.take(end)
        try:
            for (_, arr), off in zip(arrays, offsets):
                region.write(off, arr)
            body = encode_shared_request([(n, a, region.name, o) for (n, a), o in zip(arrays, offsets)],
                                         [(n, None if p is None else (region.name, p[0], p[1])) for n, p in placed],
                                         parameters)
            status, hdrs, data = self._request("POST", f"/v2/models/{quote(model, safe='')}/infer", body,
                                               {"Content-Type": "application/json"})
            if not 200 <= status < 300:
                raise self._error(status, hdrs, data)
            shared: Dict[str, SharedOutputReader] = {}
            for name, p in placed:
                if p is not None:
                    shared[name] = _region_reader(region, name, p[0], p[1], status)
            return decode_response(data, hdrs.get(HEADER_LENGTH), status, shared)
        finally:
            pool.give_back(region)

    def forward(self, layer: str, x: ArrayLike, default: Optional[ArrayLike] = None,
                keep: bool = False) -> ForwardResult:
        """The layer's blend for ``x`` (``[batch, *input_shape]``), with the
        layer's own default output ``default`` (``[batch, *output_shape]``).
        ``keep=True`` asks the host to keep what backward needs; the result's
        ``forward_id`` then names it for :meth:`backward`."""
        inputs: Dict[str, ArrayLike] = {"input": x}
        if default is not None:
            inputs["default"] = default
        params = {"keep_forward": True} if keep else None
        resp = self._infer(layer, [(n, as_fp32(n, v)) for n, v in inputs.items()], params, ["output"])
        out = _need(resp, "output")
        fid = resp.parameters.get("forward_id")
        if keep and not isinstance(fid, str):
            raise KasminaProtocolError(200, f"layer {layer!r}: keep_forward was asked for and no forward_id came back")
        applied = resp.parameters.get("default_applied")
        return ForwardResult(output=out, forward_id=fid if isinstance(fid, str) else None,
                             seeds=_seeds_param(resp.parameters, 200), alpha_total=_alpha_total(resp.parameters),
                             default_applied=applied if isinstance(applied, bool) else None,
                             parameters=resp.parameters)

    def backward(self, layer: str, grad_output: ArrayLike, forward_id: Optional[str] = None,
                 x: Optional[ArrayLike] = None, default: Optional[ArrayLike] = None) -> BackwardResult:
        """∂loss/∂x (and ∂loss/∂default) for ``grad_output`` = ∂loss/∂output.

        Either of a kept forward (``forward_id`` from ``forward(..., keep=True)``:
        only ``grad_output`` is sent) or in one call with the forward
        (``x`` and optionally ``default``: the answer carries ``output`` too).
        """
        if (forward_id is None) == (x is None):
            raise ValueError("backward needs exactly one of forward_id (a kept forward) and x (forward and backward in one call)")
        if default is not None and x is None:
            raise ValueError("default goes with x: a kept forward already has its default")
        inputs: Dict[str, ArrayLike] = {}
        params: Optional[Dict[str, Any]] = None
        if x is not None:
            inputs["input"] = x
            if default is not None:
                inputs["default"] = default
        else:
            params = {"forward_id": forward_id}
        inputs["grad_output"] = grad_output
        outputs = (["output"] if x is not None else []) + ["grad_input", "grad_default"]
        resp = self._infer(layer, [(n, as_fp32(n, v)) for n, v in inputs.items()], params, outputs)
        return BackwardResult(grad_input=_need(resp, "grad_input"), grad_default=resp.outputs.get("grad_default"),
                              output=resp.outputs.get("output") if x is not None else None,
                              seeds=_seeds_param(resp.parameters, 200), alpha_total=_alpha_total(resp.parameters),
                              parameters=resp.parameters)


def _region_reader(region: Region, name: str, offset: int, size: int, status: int) -> SharedOutputReader:
    """Reads output ``name`` from the ``size`` bytes at ``offset`` of region."""
    def read(shape: List[int]) -> np.ndarray:
        n = 4 * int(np.prod(shape, dtype=np.int64))
        if n > size:
            raise KasminaProtocolError(status, f"output {name!r} of shape {shape} does not fit the {size} bytes given for it")
        return region.read(offset, shape, FP32)
    return read


def _unpickle_client(url: str, timeout: float) -> Client:
    return Client(url, token=os.environ.get("KASMINA_HOST_TOKEN") or None, timeout=timeout)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed by the host: an idle socket
    that polls readable holds an EOF (or bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(0))
        r, _, _ = select.select([sock], [], [], 0)
        return bool(r)
    except (OSError, ValueError):
        return True


def _need(resp: InferResponse, name: str) -> np.ndarray:
    if name not in resp.outputs:
        raise KasminaProtocolError(200, f"model {resp.model_name!r}: the answer has no output {name!r} (got {sorted(resp.outputs)})")
    return resp.outputs[name]


def _layer_path(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"layer name {name!r}: want a non-empty string")
    return f"/v1/layers/{quote(name, safe='')}"


def _seed_path(layer_name: str, seed_idx: int, what: str) -> str:
    if isinstance(seed_idx, bool) or not isinstance(seed_idx, (int, np.integer)) or seed_idx < 0:
        raise ValueError(f"seed_idx {seed_idx!r}: want an integer ≥ 0")
    return f"{_layer_path(layer_name)}/seeds/{int(seed_idx)}/{what}"


URLOrClient = Union[str, Client, None]


def client_for(client: URLOrClient) -> Client:
    """``client`` itself, a Client for a URL string, or :meth:`Client.from_env`."""
    if isinstance(client, Client):
        return client
    if isinstance(client, str):
        return Client(client)
    if client is None:
        return Client.from_env()
    raise TypeError(f"client: want a kasmina_host.Client or a URL, got {type(client).__name__}")
