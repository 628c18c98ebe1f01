"""End to end: a two-layer model wrapped with ``wrap`` trains on a real
kasmina-host; half-way through, a seed is grafted into its second layer by
bus commands published the way esperlite's ``OonaClient.publish`` writes
them (redis-py, a real redis-server). The loss curve must equal the same
training run in-process in PyTorch, and the host's outcome events and
health signals for that seed must appear on ``telemetry.seed.health``.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, List

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the training test cannot run")
from torch import nn  # noqa: E402

from golden import load_cases  # noqa: E402
from kasmina_host import Client  # noqa: E402
from kasmina_host.torch import wrap  # noqa: E402
from realhost import GOLDEN, WAIT, HostProcess, RedisProcess, host_binary  # noqa: E402

pytestmark = pytest.mark.host

COMMANDS = "control.kasmina.commands"
HEALTH = "telemetry.seed.health"
KERNEL_CASE = "golden-1-023"  # per sample [8] → [16]: fits the second layer
STEPS, GRAFT_AT, ALPHA, LR = 8, 4, 0.5, 0.05


def publish(r, payload: Dict[str, Any]) -> str:
    """OonaClient.publish: the OonaMessage's model_dump(mode="json"), dicts
    and lists through json.dumps, everything else through str(), XADD."""
    message = {
        "event_id": str(uuid.uuid4()),
        "sender_id": "Tamiyo-Controller-test",
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "trace_id": "trace-graft-" + uuid.uuid4().hex[:8],
        "topic": COMMANDS,
        "payload": payload,
    }
    flat = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in message.items()}
    r.xadd(COMMANDS, flat)
    return message["event_id"]


def parse_fields(fields: Dict[str, str]) -> Dict[str, Any]:
    """OonaClient._parse_fields: json.loads every field, the raw string on failure."""
    out = {}
    for k, v in fields.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


class HealthReader:
    """Reads telemetry.seed.health from the start, keeping every payload."""

    def __init__(self, r) -> None:
        self.r, self.last, self.messages = r, "0", []

    def poll(self, block_ms: int = 200) -> None:
        res = self.r.xread({HEALTH: self.last}, count=500, block=block_ms)
        for _, entries in res or []:
            for entry_id, fields in entries:
                self.last = entry_id
                self.messages.append(parse_fields(fields))

    def wait_for(self, pred, what: str, tick=None) -> Dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for m in self.messages:
                if isinstance(m.get("payload"), dict) and pred(m):
                    return m
            if tick:
                tick()
            self.poll()
        raise AssertionError(f"no {what} on {HEALTH} within {WAIT}s; got {self.messages[-5:]}")


class Reference(nn.Module):
    """The same model in-process: after the graft its second layer is
    (1 − α)·linear(h) + α·kernel(h)."""

    def __init__(self, model: nn.Sequential, kernel: nn.Module) -> None:
        super().__init__()
        self.l0, self.act, self.l2 = model[0], model[1], model[2]
        self.kernel = kernel.requires_grad_(False)
        self.grafted = False

    def forward(self, x):
        h = self.act(self.l0(x))
        out = self.l2(h)
        return (1 - ALPHA) * out + ALPHA * self.kernel(h) if self.grafted else out


def train(model: nn.Module, x, y, graft) -> List[float]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for step in range(STEPS):
        if step == GRAFT_AT:
            graft()
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    binary = host_binary(str(tmp_path_factory.mktemp("bin")))
    redis = RedisProcess()
    try:
        host = HostProcess(binary, GOLDEN, ["--oona", redis.url, "--signal-interval", "100ms"])
    except BaseException:
        redis.stop()
        raise
    try:
        yield host, redis
    finally:
        host.stop()
        redis.stop()


def test_training_with_a_seed_grafted_over_the_bus_matches_pytorch(stack):
    host, redis = stack
    kcase = next(c for c in load_cases(GOLDEN) if c.name == KERNEL_CASE)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 16))
    x, y = torch.randn(32, 4), torch.randn(32, 16)
    reference = Reference(copy.deepcopy(model), kcase.model(torch.float32))

    client = Client(host.unix_url)
    wrapped = wrap(model, client=client, seeds_per_layer=4, preserve_original=False, sync_interval=None)
    assert wrapped.get_layer_names() == ["0", "2"]
    health = HealthReader(redis.client)
    events: Dict[str, str] = {}

    def graft_over_the_bus():
        events["load"] = publish(redis.client, {"command": "load_kernel", "layer_name": "2", "seed_idx": 0,
                                                "artifact_id": kcase.artifact})
        events["alpha"] = publish(redis.client, {"command": "set_alpha", "layer_name": "2", "seed_idx": 0,
                                                 "alpha": ALPHA})
        for key, kind in (("load", "kernel_load_success"), ("alpha", "seed_alpha_changed")):
            m = health.wait_for(lambda m: m["payload"].get("command_event_id") == events[key], f"outcome of {key}")
            assert m["payload"]["event_type"] == kind, m
            assert m["payload"]["layer_name"] == "2" and m["payload"]["seed_idx"] == 0
        wrapped.refresh()  # the layer hears of the seed now, not at its next periodic sync

    def graft_in_process():
        reference.grafted = True

    losses = train(wrapped, x, y, graft_over_the_bus)
    ref_losses = train(reference, x, y, graft_in_process)

    assert losses[:GRAFT_AT] == ref_losses[:GRAFT_AT]  # no seed yet: the same PyTorch ops
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    stats = wrapped.get_layer_stats("2")
    assert stats["host_forward_calls"] == STEPS - GRAFT_AT and stats["host_backward_calls"] == STEPS - GRAFT_AT
    assert wrapped.get_layer_stats("0")["host_forward_calls"] == 0
    seed = client.layer("2")["seeds"][0]
    assert seed["kernel"] is not None and seed["alpha"] == ALPHA and seed["state"] == "germinated"

    # The host's health signals for that seed, computed from the training traffic.
    layer_id = client.layer("2")["layer_id"]

    def more_traffic():
        with torch.no_grad():
            wrapped(x)

    sig = health.wait_for(lambda m: "event_type" not in m["payload"] and m["payload"].get("layer_id") == layer_id
                          and m["payload"].get("seed_id") == 0, "health signal for layer 2 seed 0", more_traffic)
    assert sig["sender_id"] == "kasmina-host.pytest"
    assert 0.0 <= sig["payload"]["health_score"] <= 1.0
