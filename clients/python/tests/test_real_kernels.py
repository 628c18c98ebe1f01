"""The client's binary tensor codec against a real kasmina-host's directly
served kernels (the model is the kernel: today's behaviour, which the
layer work keeps), over loopback TCP: every golden case's output within
its tolerance, the host's refusals with its messages, keep-alive."""

from __future__ import annotations

import numpy as np
import pytest

from golden import load_cases, rel
from kasmina_host import Client, KasminaHostError
from realhost import GOLDEN, HostProcess, host_binary

pytestmark = pytest.mark.host

CASES = load_cases(GOLDEN)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = HostProcess(host_binary(str(tmp_path_factory.mktemp("bin")), unix=False), GOLDEN, unix=False)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def client(host):
    return Client(host.tcp_url)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_golden_kernel_through_the_binary_extension(client, c):
    res = client.infer(c.name, {"input": c.x})
    out = res.outputs["output"]
    assert list(out.shape) == c.output_shape and out.dtype == np.float32
    assert rel(out, c.expected) <= c.tolerance
    assert res.parameters.get("executed_on") == "cpu"


def test_connections_are_reused_with_the_real_host(host):
    c = Client(host.tcp_url)
    for case in CASES[:10]:
        c.infer(case.name, {"input": case.x})
    assert c.connections_opened == 1


def test_refusals_carry_the_hosts_message(client):
    with pytest.raises(KasminaHostError) as e:
        client.infer("no-such-kernel", {"input": np.ones((1, 4))})
    assert e.value.status == 404 and "no-such-kernel" in e.value.message
    c = CASES[0]
    with pytest.raises(KasminaHostError) as e:
        client.infer(c.name, {"input": np.ones((1, c.input_shape[1] + 1))})
    assert e.value.status == 400 and str(c.input_shape[1] + 1) in e.value.message
    assert not e.value.message.startswith("bad input")
