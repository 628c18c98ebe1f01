"""Client against the fake host: the bytes on the wire, errors, transports."""

import json
import os
import socket
import threading

import numpy as np
import pytest

from fakehost import FakeHost
from conftest import make_kernels
from kasmina_host import (Client, KasminaHostError, KasminaHostUnavailable, KasminaProtocolError,
                          stable_layer_id)
from kasmina_host.wire import HEADER_LENGTH


def blend(kernels, seeds, x, default=None):
    """The SPEC's blend in float64, for (artifact, alpha) pairs."""
    total = sum(a for _, a in seeds)
    scale = 1 / total if total > 1 else 1.0
    out = sum(a * scale * kernels[k].forward(x) for k, a in seeds)
    if default is not None:
        out = out + (1 - min(total, 1.0)) * default.astype(np.float64)
    return out


def setup_layer(c, name="l1", seeds=(("k-a", 0.4),), **kw):
    c.declare_layer(name, num_seeds=4, input_shape=[6], output_shape=[4], **kw)
    for i, (art, alpha) in enumerate(seeds):
        c.load_kernel(name, i, art)
        c.set_alpha(name, i, alpha)


def test_forward_sends_the_binary_extension_only(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    d = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    r = c.forward("l1", x, default=d, keep=True)

    (req,) = host.infer_requests()
    assert req.path == "/v2/models/l1/infer"
    assert req.headers["content-type"] == "application/octet-stream"
    hlen = int(req.headers[HEADER_LENGTH.lower()])
    head = json.loads(req.body[:hlen])
    assert head["inputs"] == [
        {"name": "input", "shape": [3, 6], "datatype": "FP32", "parameters": {"binary_data_size": 72}},
        {"name": "default", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}},
    ]
    assert head["parameters"] == {"binary_data_output": True, "keep_forward": True}
    assert req.body[hlen:] == x.astype("<f4").tobytes() + d.astype("<f4").tobytes()

    np.testing.assert_allclose(r.output, blend(host.kernels, [("k-a", 0.4)], x, d), rtol=1e-6, atol=1e-6)
    assert r.forward_id in host.forwards
    assert r.seeds == [{"seed_idx": 0, "alpha": 0.4, "kernel": "k-a"}]
    assert r.alpha_total == pytest.approx(0.4) and r.default_applied is True


def test_no_request_carries_json_tensor_data(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c)
    x = np.ones((2, 6), np.float32)
    r = c.forward("l1", x, default=np.zeros((2, 4)), keep=True)
    c.backward("l1", np.ones((2, 4)), forward_id=r.forward_id)
    c.backward("l1", np.ones((2, 4)), x=x, default=np.zeros((2, 4)))
    reqs = host.infer_requests()
    assert len(reqs) == 3
    for req in reqs:
        hlen = int(req.headers[HEADER_LENGTH.lower()])
        for inp in json.loads(req.body[:hlen])["inputs"]:
            assert "data" not in inp and inp["datatype"] == "FP32"


def test_an_answer_with_json_floats_is_refused(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c)
    host.answer_json_outputs = True
    with pytest.raises(KasminaProtocolError, match="came back as JSON data"):
        c.forward("l1", np.ones((1, 6)))


def test_backward_with_forward_id_sends_only_grad_output_and_matches_one_call(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c, seeds=(("k-a", 0.7), ("k-b", 0.6)))  # A = 1.3 > 1: alphas scaled by 1/1.3
    rng = np.random.default_rng(3)
    x, d, g = (rng.standard_normal(s).astype(np.float32) for s in ((5, 6), (5, 4), (5, 4)))
    f = c.forward("l1", x, default=d, keep=True)
    b = c.backward("l1", g, forward_id=f.forward_id)
    req = host.infer_requests()[-1]
    hlen = int(req.headers[HEADER_LENGTH.lower()])
    head = json.loads(req.body[:hlen])
    assert [i["name"] for i in head["inputs"]] == ["grad_output"]
    assert head["parameters"]["forward_id"] == f.forward_id
    assert req.body[hlen:] == g.tobytes()

    want = sum(a / 1.3 * host.kernels[k].vjp(x, g) for k, a in (("k-a", 0.7), ("k-b", 0.6)))
    np.testing.assert_allclose(b.grad_input, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.grad_default, np.zeros_like(g), atol=1e-6)  # 1 − min(A, 1) = 0
    assert b.output is None

    one = c.backward("l1", g, x=x, default=d)
    np.testing.assert_array_equal(one.grad_input, b.grad_input)
    np.testing.assert_array_equal(one.output, f.output)


def test_unknown_and_evicted_forward_ids_raise_the_hosts_404(fake):
    host, url = fake
    host.max_forwards = 2
    c = Client(url)
    setup_layer(c)
    x = np.ones((1, 6))
    first = c.forward("l1", x, keep=True).forward_id
    c.forward("l1", x, keep=True)
    c.forward("l1", x, keep=True)  # evicts the first
    with pytest.raises(KasminaHostError) as e:
        c.backward("l1", np.ones((1, 4)), forward_id=first)
    assert e.value.status == 404
    assert e.value.message == f'forward_id "{first}" is unknown, evicted or expired'
    with pytest.raises(KasminaHostError, match="nope"):
        c.backward("l1", np.ones((1, 4)), forward_id="nope")


def test_backward_needs_exactly_one_of_forward_id_and_x(fake):
    _, url = fake
    c = Client(url)
    with pytest.raises(ValueError, match="exactly one"):
        c.backward("l1", np.ones((1, 4)))
    with pytest.raises(ValueError, match="exactly one"):
        c.backward("l1", np.ones((1, 4)), forward_id="f", x=np.ones((1, 6)))
    with pytest.raises(ValueError, match="default goes with x"):
        c.backward("l1", np.ones((1, 4)), forward_id="f", default=np.ones((1, 4)))


@pytest.mark.parametrize("call,status,message", [
    (lambda c: c.layer("ghost"), 404, 'no layer named "ghost"'),
    (lambda c: c.declare_layer("bad", num_seeds=0), 400, "num_seeds 0: want an integer in 1..64"),
    (lambda c: c.load_kernel("l1", 0, "nowhere"), 404, 'artifact "nowhere" not found'),
    (lambda c: c.load_kernel("l1", 0, "k-wide"), 422,
     'kernel k-wide takes [5] and gives [4]; layer "l1" is declared [6] → [4]'),
    (lambda c: c.set_seed_state("l1", 0, "blooming"), 400, "state 'blooming' is not a seed state"),
    (lambda c: c.load_kernel("l1", 9, "k-a"), 400, 'seed_idx 9 is out of range: layer "l1" has 4 seeds'),
    (lambda c: c.forward("ghost", np.ones((1, 6))), 404, 'no layer named "ghost"'),
])
def test_refusals_raise_with_the_hosts_status_and_message(fake, call, status, message):
    _, url = fake
    c = Client(url)
    c.declare_layer("l1", num_seeds=4, input_shape=[6], output_shape=[4])
    with pytest.raises(KasminaHostError) as e:
        call(c)
    assert (e.value.status, e.value.message) == (status, message)
    assert message in str(e.value)


def test_the_token_is_sent_and_a_wrong_one_is_401():
    host = FakeHost(make_kernels(), token="s3cret")
    url = host.start_tcp()
    try:
        with pytest.raises(KasminaHostError) as e:
            Client(url, token="wrong").layers()
        assert e.value.status == 401 and e.value.message == "missing or wrong bearer token"
        assert Client(url, token="s3cret").layers() == []
        assert host.requests[-1].headers["authorization"] == "Bearer s3cret"
    finally:
        host.stop()
    with pytest.raises(ValueError, match="blank or holds whitespace"):
        Client(url, token="two words")


def test_layers_views_and_seed_control(fake):
    _, url = fake
    c = Client(url)
    v = c.declare_layer("l1", num_seeds=2, input_shape=[6], output_shape=[4])
    assert v["layer_id"] == stable_layer_id("l1") and v["num_seeds"] == 2
    assert c.declare_layer("l1", num_seeds=2, input_shape=[6], output_shape=[4])["num_seeds"] == 2
    out = c.load_kernel("l1", 1, "k-b")
    assert out["event_type"] == "kernel_load_success" and out["artifact_id"] == "k-b"
    out = c.set_alpha("l1", 1, 1.5)
    assert out["alpha"] == 1.0 and out["clamped"] is True
    assert c.set_seed_state("l1", 1, "grafting")["to_state"] == "grafting"
    seeds = c.layer("l1")["seeds"]
    assert [(s["seed_idx"], s["state"], s["kernel"], s["alpha"]) for s in seeds] == [
        (0, "dormant", None, 0.0), (1, "grafting", "k-b", 1.0)]
    assert c.unload_kernel("l1", 1)["event_type"] == "kernel_unload_success"
    assert c.layer("l1")["seeds"][1]["kernel"] is None
    assert [l["layer_name"] for l in c.layers()] == ["l1"]
    assert c.retire_layer("l1")["state"] == "retired"
    assert c.layers() == []
    with pytest.raises(ValueError, match="finite"):
        c.set_alpha("l1", 0, float("nan"))
    with pytest.raises(ValueError, match="seed_idx"):
        c.load_kernel("l1", -1, "k-a")


def test_an_outcome_that_reports_a_failure_raises():
    # The SPEC lets a seed route answer an Outcome; one that says the command
    # failed must not read as success.
    class Failing(FakeHost):
        def _seed(self, layer, seed, method, what, body):
            from fakehost import _json
            return _json(200, {"event_type": "kernel_load_failure", "failure_reason": "disk on fire",
                               "error_class": "unavailable"})

    host = Failing(make_kernels())
    url = host.start_tcp()
    try:
        c = Client(url)
        c.declare_layer("l1")
        with pytest.raises(KasminaHostError) as e:
            c.load_kernel("l1", 0, "k-a")
        assert e.value.message == "disk on fire" and e.value.error_class == "unavailable"
    finally:
        host.stop()


def test_unix_socket(unix_fake):
    host, url = unix_fake
    assert url.startswith("unix:///")
    c = Client(url)
    setup_layer(c)
    x = np.random.default_rng(5).standard_normal((2, 6)).astype(np.float32)
    f = c.forward("l1", x, keep=True)
    np.testing.assert_allclose(f.output, blend(host.kernels, [("k-a", 0.4)], x), rtol=1e-6, atol=1e-6)
    b = c.backward("l1", np.ones((2, 4), np.float32), forward_id=f.forward_id)
    assert b.grad_input.shape == (2, 6) and b.grad_default is None
    with pytest.raises(KasminaHostError) as e:
        c.layer("ghost")
    assert e.value.status == 404
    assert c.connections_opened == 1 and host.connections == 1


def test_connections_are_kept_alive_and_reused(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c)
    for _ in range(20):
        c.forward("l1", np.ones((1, 6)))
        c.layer("l1")
    assert c.connections_opened == 1 and host.connections == 1


def test_a_connection_the_host_dropped_while_idle_is_replaced(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c)
    host.drop_after_answer = True  # closes without Connection: close
    for _ in range(5):
        c.forward("l1", np.ones((1, 6)))
    assert c.connections_opened >= 5


def test_threads_share_a_client(fake):
    host, url = fake
    c = Client(url)
    setup_layer(c)
    errors = []

    def work(seed):
        try:
            x = np.random.default_rng(seed).standard_normal((2, 6)).astype(np.float32)
            for _ in range(15):
                out = c.forward("l1", x).output
                np.testing.assert_allclose(out, blend(host.kernels, [("k-a", 0.4)], x), rtol=1e-6, atol=1e-6)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert 1 <= c.connections_opened <= 8


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_host_that_is_down_raises_and_never_returns_zeros():
    for url in (f"http://127.0.0.1:{_closed_port()}", "unix:///nonexistent/kasmina/host.sock"):
        c = Client(url, timeout=5)
        with pytest.raises(KasminaHostUnavailable) as e:
            c.forward("l1", np.ones((1, 6)))
        assert isinstance(e.value, ConnectionError) and isinstance(e.value, KasminaHostError)
        assert url in str(e.value)
        with pytest.raises(ConnectionError):
            c.ready()


def test_a_host_that_goes_down_between_forward_and_backward(fake):
    host, url = fake
    c = Client(url, timeout=5)
    setup_layer(c)
    fid = c.forward("l1", np.ones((1, 6)), keep=True).forward_id
    host.stop()
    with pytest.raises(KasminaHostUnavailable):
        c.backward("l1", np.ones((1, 4)), forward_id=fid)


def test_a_host_that_does_not_answer_in_time_raises():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts, never answers
    try:
        c = Client(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.3)
        with pytest.raises(KasminaHostUnavailable, match="did not answer"):
            c.layers()
    finally:
        s.close()


@pytest.mark.parametrize("url,msg", [
    ("ftp://x", "scheme 'ftp'"),
    ("unix://", "socket path"),
    ("http://:80", "no host"),
])
def test_bad_urls(url, msg):
    with pytest.raises(ValueError, match=msg):
        Client(url)


def test_stable_layer_id_is_fnv1a_32_masked_to_31_bits():
    # FNV-1a 32-bit reference values: "" → 0x811c9dc5, "a" → 0xe40c292c, "foobar" → 0xbf9cf968.
    assert stable_layer_id("") == 0x811C9DC5 & 0x7FFFFFFF
    assert stable_layer_id("a") == 0xE40C292C & 0x7FFFFFFF
    assert stable_layer_id("foobar") == 0xBF9CF968 & 0x7FFFFFFF


def test_client_from_env(monkeypatch, fake):
    _, url = fake
    monkeypatch.setenv("KASMINA_HOST_URL", url)
    monkeypatch.delenv("KASMINA_HOST_TOKEN", raising=False)
    assert Client.from_env().layers() == []


class Scripted:
    """A loopback HTTP/1.1 server that follows a script, one action per
    request in arrival order: "ok" answers and keeps the connection, "ok+close"
    answers then closes it, "drop" reads the request and closes without an
    answer."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.connections = 0
        self.closed = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.script:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            f = conn.makefile("rb")
            while self.script:
                line = f.readline()
                if not line:
                    break
                headers = {}
                while True:
                    h = f.readline().strip()
                    if not h:
                        break
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                f.read(int(headers.get("content-length", 0)))
                self.requests.append(line.decode().split()[1])
                action = self.script.pop(0)
                if action == "drop":
                    break
                body = b'{"event_type":"seed_state_changed"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                if action == "ok+close":
                    break
            f.close()
            conn.close()
            self.closed.set()

    def stop(self):
        self.sock.close()


def test_an_idle_connection_the_host_closed_is_not_reused():
    srv = Scripted(["ok+close", "ok"])
    try:
        c = Client(srv.url, timeout=5)
        c.set_seed_state("l", 0, "germinated")
        assert srv.closed.wait(20)
        c.set_seed_state("l", 0, "training")  # not retried, yet it works: the closed connection was noticed
        assert srv.connections == 2 and len(srv.requests) == 2
    finally:
        srv.stop()


def test_a_request_lost_on_a_reused_connection_is_retried_except_a_state_change():
    srv = Scripted(["ok", "drop", "ok"])
    try:
        c = Client(srv.url, timeout=5)
        c.set_alpha("l", 0, 0.5)
        c.set_alpha("l", 0, 0.5)  # dropped on the reused connection: sent again on a fresh one
        assert srv.requests == ["/v1/layers/l/seeds/0/alpha"] * 3 and srv.connections == 2
    finally:
        srv.stop()
    srv = Scripted(["ok", "drop"])
    try:
        c = Client(srv.url, timeout=5)
        c.set_seed_state("l", 0, "germinated")
        with pytest.raises(KasminaHostUnavailable, match="closed the connection"):
            c.set_seed_state("l", 0, "training")
        assert len(srv.requests) == 2
    finally:
        srv.stop()


def test_a_pickled_client_keeps_its_url_and_never_its_token(monkeypatch):
    import copy
    import pickle
    c = Client("unix:///run/k.sock", token="s3cret", timeout=7)
    assert copy.deepcopy(c) is c
    raw = pickle.dumps(c)
    assert b"s3cret" not in raw
    monkeypatch.setenv("KASMINA_HOST_TOKEN", "from-env")
    back = pickle.loads(raw)
    assert (back.url, back.timeout, back._headers["Authorization"]) == ("unix:///run/k.sock", 7, "Bearer from-env")


def test_shared_memory_is_tried_once_on_this_node_and_given_up_when_the_host_refuses(fake):
    host, url = fake
    c = Client(url)  # loopback: tried
    setup_layer(c)
    x = np.ones((2, 6), dtype=np.float32)
    for _ in range(3):
        c.forward("l1", x)
    regs = [r for r in host.requests if "/systemsharedmemory/" in r.path]
    assert len(regs) == 1, [r.path for r in regs]
    (reg,) = regs
    doc = json.loads(reg.body)
    name = reg.path.split("/")[-2]
    assert reg.method == "POST" and reg.path == f"/v2/systemsharedmemory/region/{name}/register"
    assert doc["key"] == "/" + name and doc["offset"] == 0 and doc["byte_size"] >= 1 << 20
    assert name.startswith(f"kasmina-{os.getpid()}-")
    assert not os.path.exists("/dev/shm/" + name), "the refused region's object was left behind"
    assert not c.shared_memory and "no route" in (c.shared_memory_error or "")
    assert all(r.headers["content-type"] == "application/octet-stream" for r in host.infer_requests())

    strict = Client(url, shared_memory=True)
    with pytest.raises(KasminaHostError) as e:
        strict.forward("l1", x)
    assert e.value.status == 404


def test_shared_memory_is_not_tried_for_a_remote_host_or_when_turned_off(fake):
    host, url = fake
    # Decided without a request: no host off this node can open our /dev/shm.
    assert Client("http://192.0.2.7:8470")._shm_wanted is False
    assert Client("http://localhost:8470")._shm_wanted is None and Client("unix:///x.sock")._shm_wanted is None
    c = Client(url, shared_memory=False)
    setup_layer(c)
    c.forward("l1", np.ones((2, 6), dtype=np.float32))
    assert not [r for r in host.requests if "/systemsharedmemory/" in r.path]


def test_a_host_that_refuses_a_layers_outputs_in_shared_memory(fake):
    # A host from before a layer's outputs could go to shared memory (501):
    # the client takes them in the answer from then on, inputs still in
    # the region, and gets the socket's results.
    host, url = fake
    host.shared_memory = True
    c = Client(url)
    setup_layer(c)
    x = np.random.default_rng(3).standard_normal((3, 6)).astype(np.float32)
    d = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    want = Client(url, shared_memory=False).forward("l1", x, default=d).output
    for _ in range(2):
        np.testing.assert_array_equal(c.forward("l1", x, default=d).output, want)
    assert c.shared_memory
    bodies = [json.loads(r.body) for r in host.infer_requests()[1:]]
    refused, retried, later = bodies
    assert "shared_memory_region" in refused["outputs"][0]["parameters"]
    for b in (retried, later):
        assert b["outputs"] == [{"name": "output", "parameters": {"binary_data": True}}]
        assert all("shared_memory_region" in i["parameters"] for i in b["inputs"])
    c.close()
    assert not host.regions  # close() unregistered the region
