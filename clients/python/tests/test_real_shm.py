"""System shared memory between the client and a real kasmina-host: the
client's regions (kasmina_host.shm) registered with the host, inputs and a
kernel's output passed through them, the same answers as over the socket,
regions given back, a host without the extension, a forked child."""

from __future__ import annotations

import os

import numpy as np
import pytest

from golden import load_cases, rel
from kasmina_host import Client, KasminaHostError
from kasmina_host.shm import MIN_REGION_BYTES
from realhost import GOLDEN, HostProcess, host_binary

pytestmark = pytest.mark.host

CASES = load_cases(GOLDEN)


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> str:
    return host_binary(str(tmp_path_factory.mktemp("bin")))


@pytest.fixture(scope="module")
def host(binary):
    h = HostProcess(binary, GOLDEN)
    try:
        yield h
    finally:
        h.stop()


def ours(client: Client):
    """This process's regions the host has registered."""
    status = client._json("GET", "/v2/systemsharedmemory/status")
    return [r for r in status if r["name"].startswith(f"kasmina-{os.getpid()}-")]


def spy_on_infer(c: Client) -> list:
    """Records (request body, answer body) of c's inferences."""
    seen: list = []
    orig = c._request

    def spy(method, path, body=None, headers=None, retry=True):
        out = orig(method, path, body, headers, retry)
        if path.endswith("/infer"):
            seen.append((bytes(body), bytes(out[2])))
        return out

    c._request = spy
    return seen


@pytest.mark.parametrize("url", ["unix_url", "tcp_url"])
def test_golden_kernels_through_shared_memory_match_the_socket(host, url):
    shm = Client(getattr(host, url), shared_memory=True)
    sock = Client(getattr(host, url), shared_memory=False)
    for c in CASES:
        a = shm.infer(c.name, {"input": c.x}).outputs["output"]
        b = sock.infer(c.name, {"input": c.x}).outputs["output"]
        assert list(a.shape) == c.output_shape and a.dtype == np.float32
        assert a.tobytes() == b.tobytes(), c.name
        assert rel(a, c.expected) <= c.tolerance
    assert shm.shared_memory and not sock.shared_memory
    (region,) = ours(shm)  # one request at a time: one region
    assert region["key"] == "/" + region["name"] and os.path.exists("/dev/shm/" + region["name"])
    shm.close()


def test_the_output_is_read_from_the_region(host):
    # The answer names the output without bytes: the values the client
    # returns can only have come through shared memory.
    c = Client(host.unix_url)
    seen = spy_on_infer(c)
    case = CASES[0]
    out = c.infer(case.name, {"input": case.x}).outputs["output"]
    ((request, answer),) = seen
    assert b'"shared_memory_region"' in request and b'"outputs"' in request
    assert len(answer) < 1024 and b"binary_data_size" not in answer
    assert rel(out, case.expected) <= case.tolerance
    c.close()


def test_a_request_larger_than_the_region_grows_it(host):
    c = Client(host.unix_url)
    case = max(CASES, key=lambda k: int(np.prod(k.input_shape[1:])))
    per_sample = 4 * int(np.prod(case.input_shape[1:]))
    batch = min(4096, MIN_REGION_BYTES // per_sample + 1)
    x = np.repeat(case.x[:1], batch, axis=0)
    small = c.infer(case.name, {"input": case.x}).outputs["output"]
    assert c._shm_pool.created == 1
    big = c.infer(case.name, {"input": x}).outputs["output"]
    assert c._shm_pool.created == 2
    np.testing.assert_array_equal(big[0], small[0])
    np.testing.assert_array_equal(big, np.repeat(big[:1], batch, axis=0))
    assert [r["byte_size"] for r in ours(c)] == [2 * MIN_REGION_BYTES]  # the small one was given back
    c.close()


def test_close_unregisters_and_removes_the_regions(host):
    c = Client(host.tcp_url)
    c.infer(CASES[0].name, {"input": CASES[0].x})
    names = [r["name"] for r in ours(c)]
    assert names and c.shared_memory
    c.close()
    assert not ours(Client(host.tcp_url, shared_memory=False))
    assert not any(os.path.exists("/dev/shm/" + n) for n in names)
    c.infer(CASES[0].name, {"input": CASES[0].x})  # a later call makes a new one
    assert c.shared_memory
    c.close()


def test_layer_forward_and_backward_through_shared_memory(host):
    case = CASES[0]
    results = []
    for shm in (True, False):
        c = Client(host.unix_url, shared_memory=shm)
        seen = spy_on_infer(c)
        name = f"shm-layer-{shm}"
        c.declare_layer(name, num_seeds=1, input_shape=case.input_shape[1:], output_shape=case.output_shape[1:])
        c.load_kernel(name, 0, f"{case.name}/kernel.safetensors")
        c.set_alpha(name, 0, 0.5)
        d = np.full(case.output_shape, 0.25, dtype=np.float32)
        fwd = c.forward(name, case.x, default=d, keep=True)
        bwd = c.backward(name, case.grad_output, forward_id=fwd.forward_id)
        one = c.backward(name, case.grad_output, x=case.x, default=d)
        # Without default: the kept forward's backward has no grad_default.
        bare = c.forward(name, case.x, keep=True)
        nodef = c.backward(name, case.grad_output, forward_id=bare.forward_id)
        assert nodef.grad_default is None
        results.append([a.tobytes() for a in (fwd.output, bwd.grad_input, bwd.grad_default, one.output, one.grad_input,
                                              one.grad_default, bare.output, nodef.grad_input)])
        assert c.shared_memory == shm
        for request, answer in seen:
            # Through shared memory no tensor crosses the socket either way.
            assert (b"binary_data_size" not in request + answer) == shm, (request, answer)
        c.retire_layer(name)
        c.close()
    assert results[0] == results[1]


def test_a_host_without_shared_memory(binary):
    h = HostProcess(binary, GOLDEN, args=["--no-shared-memory"], unix=False)
    try:
        case = CASES[0]
        before = set(os.listdir("/dev/shm"))
        auto = Client(h.tcp_url)
        out = auto.infer(case.name, {"input": case.x}).outputs["output"]
        assert rel(out, case.expected) <= case.tolerance
        assert not auto.shared_memory and "not enabled" in (auto.shared_memory_error or "")
        strict = Client(h.tcp_url, shared_memory=True)
        with pytest.raises(KasminaHostError) as e:
            strict.infer(case.name, {"input": case.x})
        assert e.value.status == 501
        assert set(os.listdir("/dev/shm")) <= before, "a refused region's object was left behind"
    finally:
        h.stop()


def test_a_forked_child_uses_regions_of_its_own(host):
    c = Client(host.unix_url)
    case = CASES[0]
    want = c.infer(case.name, {"input": case.x}).outputs["output"].tobytes()
    parent = [r["name"] for r in ours(c)]
    pid = os.fork()
    if pid == 0:  # the child: its own region, the parent's untouched
        code = 1
        try:
            got = c.infer(case.name, {"input": case.x}).outputs["output"].tobytes()
            mine = [r["name"] for r in c._json("GET", "/v2/systemsharedmemory/status")
                    if r["name"].startswith(f"kasmina-{os.getpid()}-")]
            code = 0 if got == want and len(mine) == 1 else 3
            c.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r["name"] for r in ours(c)] == parent and all(os.path.exists("/dev/shm/" + n) for n in parent)
    assert c.infer(case.name, {"input": case.x}).outputs["output"].tobytes() == want
    c.close()


def test_a_client_dropped_without_close_gives_its_regions_back(host):
    import gc
    c = Client(host.unix_url)
    c.infer(CASES[0].name, {"input": CASES[0].x})
    names = [r["name"] for r in ours(c)]
    assert names
    del c
    gc.collect()
    assert not [r for r in ours(Client(host.unix_url, shared_memory=False)) if r["name"] in names]
    assert not any(os.path.exists("/dev/shm/" + n) for n in names)


def test_a_kernel_whose_output_grew_since_its_metadata_was_read(host):
    # As after a replace with a kernel of a larger output: the cached
    # metadata gives too small a range, the host refuses it (400), and the
    # client reads the metadata again and retries once.
    c = Client(host.unix_url, shared_memory=True)
    case = CASES[0]
    want = c.infer(case.name, {"input": case.x}).outputs["output"].tobytes()
    c._output_shapes_cache[case.name] = {"output": (1,)}  # stale: smaller than the kernel's
    seen = spy_on_infer(c)
    assert c.infer(case.name, {"input": case.x}).outputs["output"].tobytes() == want
    assert len(seen) == 2 and b"needs" in seen[0][1]  # refused once, then answered
    assert c._output_shapes_cache[case.name] == {"output": tuple(case.output_shape[1:])}
    c.close()
