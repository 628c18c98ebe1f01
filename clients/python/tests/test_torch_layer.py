"""KasminaHostLayer and wrap against the fake host, with PyTorch's autograd
of the fake host's arithmetic as the reference."""

import asyncio
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the kasmina_host.torch tests cannot run")
from torch import nn  # noqa: E402

from kasmina_host import Client, KasminaHostError  # noqa: E402
from kasmina_host.torch import (ESPERLITE_LOAD_ALPHA, KasminaHostConv2dLayer, KasminaHostLayer,  # noqa: E402
                                MorphableModel, wrap)
from kasmina_host.wire import HEADER_LENGTH  # noqa: E402


def infer_params(host):
    out = []
    for r in host.infer_requests():
        hlen = int(r.headers[HEADER_LENGTH.lower()])
        head = json.loads(r.body[:hlen])
        out.append((tuple(i["name"] for i in head["inputs"]), head["parameters"]))
    return out


def torch_kernel(k):
    """The fake kernel tanh(x·Wᵀ + b) in float64 PyTorch."""
    w, b = torch.tensor(k.w), torch.tensor(k.b)
    return lambda x: torch.tanh(x @ w.T + b)


def reference(layer, host, seeds, x):
    """(1 − A)·default(x) + Σ αᵢ·kᵢ(x) in float64 PyTorch, with the layer's
    default weights; returns (out, x, weight, bias) leaves for autograd."""
    w = layer.default_transform.weight.detach().double().clone().requires_grad_(True)
    b = layer.default_transform.bias.detach().double().clone().requires_grad_(True)
    xr = x.detach().double().clone().requires_grad_(True)
    total = sum(a for _, a in seeds)
    scale = 1 / total if total > 1 else 1.0
    out = (1 - min(total, 1.0)) * (xr @ w.T + b)
    for art, a in seeds:
        out = out + a * scale * torch_kernel(host.kernels[art])(xr)
    return out, xr, w, b


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def client(fake):
    return Client(fake[1])


def test_construction_declares_the_layer_with_its_shapes(fake, client):
    host, _ = fake
    KasminaHostLayer(6, 4, num_seeds=3, layer_name="dense", client=client)
    put = [r for r in host.requests if r.method == "PUT"]
    assert [(r.path, json.loads(r.body)) for r in put] == [
        ("/v1/layers/dense", {"num_seeds": 3, "input_shape": [6], "output_shape": [4]})]
    assert host.layers["dense"].num_seeds == 3


def test_a_layer_the_host_already_has_keeps_its_seeds(fake, client):
    host, _ = fake
    client.declare_layer("dense", num_seeds=4, input_shape=[6], output_shape=[4])
    client.load_kernel("dense", 3, "k-a")
    client.set_alpha("dense", 3, 1.0)
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client, sync_interval=None)
    assert layer.has_active_seeds()
    x = torch.randn(2, 6)
    want = torch.from_numpy(host.kernels["k-a"].forward(x.numpy())).float()
    torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)


def test_no_active_seed_means_no_call_to_the_host(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client, sync_interval=None)
    n = len(host.requests)
    x = torch.randn(5, 6, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, layer.default_transform(x))
    out.sum().backward()
    assert len(host.requests) == n and host.infer_requests() == []
    assert layer.get_layer_stats()["host_forward_calls"] == 0


def test_load_kernel_returns_true_and_gives_esperlites_alpha(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    assert run(layer.load_kernel(1, "k-a")) is True
    s = host.layers["dense"].seeds[1]
    assert (s.artifact_id, s.state, s.alpha) == ("k-a", "germinated", ESPERLITE_LOAD_ALPHA)
    assert ESPERLITE_LOAD_ALPHA == min(0.5 * 0.6, 0.5)
    assert run(layer.load_kernel(2, "k-b", alpha=None)) is True
    assert host.layers["dense"].seeds[2].alpha == 0.0
    assert layer.has_active_seeds()


def test_load_kernel_failures_raise_with_the_hosts_message(fake, client):
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    with pytest.raises(KasminaHostError) as e:
        run(layer.load_kernel(0, "missing"))
    assert e.value.status == 404 and 'artifact "missing" not found' in str(e.value)
    with pytest.raises(KasminaHostError) as e:
        run(layer.load_kernel(0, "k-wide"))
    assert e.value.status == 422
    with pytest.raises(ValueError, match="Invalid seed index"):
        run(layer.load_kernel(4, "k-a"))
    assert not layer.has_active_seeds()


@pytest.mark.parametrize("seeds", [
    [("k-a", 1.0)],
    [("k-a", 0.5)],
    [("k-a", 0.0)],
    [("k-a", 0.7), ("k-b", 0.6)],  # A = 1.3: scaled to 1
    [("k-a", 0.2), ("k-b", 0.3)],
])
def test_forward_and_backward_match_pytorch_autograd_of_the_same_blend(fake, client, seeds):
    host, _ = fake
    torch.manual_seed(0)
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    for i, (art, a) in enumerate(seeds):
        run(layer.load_kernel(i, art, alpha=a))
    x = torch.randn(7, 6, requires_grad=True)
    g = torch.randn(7, 4)
    out = layer(x)
    (out * g).sum().backward()

    ref, xr, w, b = reference(layer, host, seeds, x)
    (ref * g.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.default_transform.weight.grad.double(), w.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.default_transform.bias.grad.double(), b.grad, rtol=1e-5, atol=1e-6)

    calls = infer_params(host)
    assert calls[0] == (("input", "default"), {"binary_data_output": True, "keep_forward": True})
    assert calls[1][0] == ("grad_output",) and calls[1][1]["forward_id"]
    assert layer.get_layer_stats()["host_backward_calls"] == 1


def test_gradcheck_through_the_host(fake, client):
    # float64 inputs: the host works in float32, so the numerical Jacobian
    # is taken with a large step and compared loosely. gradcheck keeps a
    # forward per perturbed evaluation and runs backward several times on one.
    fake[0].max_forwards = 10_000
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client).double()
    run(layer.load_kernel(0, "k-a", alpha=0.6))
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-2, atol=5e-3, rtol=5e-3)


def test_data_input_needs_no_kept_forward_and_no_backward_call(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    run(layer.load_kernel(0, "k-a", alpha=0.25))
    x = torch.randn(4, 6)  # data: no gradient wanted
    out = layer(x)
    out.pow(2).sum().backward()
    calls = infer_params(host)
    assert calls == [(("input", "default"), {"binary_data_output": True})]
    ref, _, w, b = reference(layer, host, [("k-a", 0.25)], x)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(layer.default_transform.weight.grad.double(), w.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.default_transform.bias.grad.double(), b.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_keeps_nothing_on_the_host(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    run(layer.load_kernel(0, "k-a"))
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 6, requires_grad=True))
    with torch.inference_mode():
        layer(torch.randn(2, 6))
    assert [p for _, p in infer_params(host)] == [{"binary_data_output": True}] * 2
    assert host.forwards == {}


def test_backward_after_the_host_dropped_the_forward_raises(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    run(layer.load_kernel(0, "k-a"))
    out = layer(torch.randn(2, 6, requires_grad=True))
    host.forwards.clear()  # evicted or expired
    with pytest.raises(KasminaHostError) as e:
        out.sum().backward()
    assert e.value.status == 404 and "forward_id" in e.value.message


def test_a_host_down_during_forward_raises(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=Client(fake[1], timeout=5))
    run(layer.load_kernel(0, "k-a"))
    host.stop()
    with pytest.raises(ConnectionError):
        layer(torch.randn(2, 6))


def test_seeds_loaded_by_others_are_seen_after_a_sync(fake, client):
    host, url = fake
    lazy = KasminaHostLayer(6, 4, layer_name="dense", client=client, sync_interval=None)
    eager = KasminaHostLayer(6, 4, layer_name="dense", client=client, sync_interval=0)
    other = Client(url)  # e.g. the host acting on a bus command
    other.load_kernel("dense", 2, "k-b")
    other.set_alpha("dense", 2, 1.0)
    x = torch.randn(3, 6)
    assert torch.equal(lazy(x), lazy.default_transform(x))  # has not heard yet
    want = torch.from_numpy(host.kernels["k-b"].forward(x.numpy())).float()
    torch.testing.assert_close(eager(x), want, rtol=1e-6, atol=1e-6)
    lazy.refresh()
    torch.testing.assert_close(lazy(x), want, rtol=1e-6, atol=1e-6)


def test_alpha_clamping_unload_and_stats(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client)
    run(layer.load_kernel(0, "k-a"))
    layer.set_seed_alpha(0, 1.7)
    assert host.layers["dense"].seeds[0].alpha == 1.0
    layer.set_seed_alpha(0, -3)
    assert host.layers["dense"].seeds[0].alpha == 0.0
    with pytest.raises(ValueError, match="NaN"):
        layer.set_seed_alpha(0, float("nan"))
    with pytest.raises(ValueError, match="Invalid seed index"):
        layer.set_seed_alpha(-1, 0.5)
    layer(torch.randn(2, 6))
    stats = layer.get_layer_stats()
    assert stats["layer_name"] == "dense" and stats["total_forward_calls"] == 1
    assert stats["total_kernel_executions"] == 1 and stats["state_stats"]["active_seeds"] == 1
    assert run(layer.unload_kernel(0)) is True
    n = len(host.infer_requests())
    layer.sync_interval = None
    layer(torch.randn(2, 6))
    assert len(host.infer_requests()) == n  # back on the fast path
    assert layer.get_layer_stats()["state_stats"]["active_seeds"] == 0


def test_float64_and_batched_shapes(fake, client):
    host, _ = fake
    layer = KasminaHostLayer(6, 4, layer_name="dense", client=client).double()
    run(layer.load_kernel(0, "k-a", alpha=0.5))
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert x.grad.dtype == torch.float64


def test_wrap_names_layers_like_esperlite_and_keeps_the_weights(fake, client):
    host, _ = fake
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(),
                          nn.Sequential(nn.Linear(6, 4, bias=False), nn.LayerNorm(4)))
    wrapped = wrap(model, client=client, target_layers=(nn.Linear, nn.LayerNorm), seeds_per_layer=2)
    assert isinstance(wrapped, MorphableModel)
    assert wrapped.get_layer_names() == ["0", "2_0"]
    assert sorted(host.layers) == ["0", "2_0"]
    assert host.layers["2_0"].num_seeds == 2 and host.layers["2_0"].input_shape == [6]
    assert isinstance(wrapped.wrapped_model[2][1], nn.LayerNorm)  # no host layer for it: left in place
    assert wrapped.wrapped_model[2][0].default_transform.bias is None
    x = torch.randn(5, 5)
    assert torch.equal(wrapped(x), model(x))
    assert host.infer_requests() == []
    assert run(wrapped.load_kernel("2_0", 1, "k-a", alpha=0.5)) is True
    assert wrapped.get_layer_stats("2_0")["state_stats"]["active_seeds"] == 1
    with pytest.raises(ValueError, match="not found"):
        wrapped.set_seed_alpha("nope", 0, 0.1)


def test_wrap_conv2d_is_declared_without_shapes(fake, client):
    host, _ = fake
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 6))
    wrapped = wrap(model, client=client)
    conv = wrapped.wrapped_model[0]
    assert isinstance(conv, KasminaHostConv2dLayer) and conv.default_transform is not model[0]
    assert torch.equal(conv.default_transform.weight, model[0].weight)
    put = {r.path: json.loads(r.body) for r in host.requests if r.method == "PUT"}
    assert put == {"/v1/layers/0": {"num_seeds": 4}, "/v1/layers/3": {"num_seeds": 4, "input_shape": [80], "output_shape": [6]}}
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(wrapped(x), model(x))
    with pytest.raises(ValueError, match="4D"):
        conv(torch.randn(3, 4, 4))


def test_importing_kasmina_host_does_not_import_torch_and_the_torch_module_says_what_is_missing():
    code = ("import sys; import kasmina_host; assert 'torch' not in sys.modules, 'torch imported';"
            "sys.modules['torch'] = None\n"
            "try:\n import kasmina_host.torch\nexcept ImportError as e:\n print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=__import__("os").path.dirname(__import__("os").path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert "kasmina_host.torch needs PyTorch" in out.stdout and "Client) works without it" in out.stdout
