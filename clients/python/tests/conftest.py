"""Fixtures for the client's tests: a fake host (tests/fakehost.py) on
loopback TCP and on a Unix socket. The real-binary fixtures live in
realhost.py."""

from __future__ import annotations

import importlib
import os
import tempfile
from typing import Iterator, Tuple

import numpy as np
import pytest

from fakehost import FakeHost, FakeKernel


def make_kernels() -> dict:
    rng = np.random.default_rng(7)
    return {
        "k-a": FakeKernel.random(rng, 6, 4),
        "k-b": FakeKernel.random(rng, 6, 4),
        "k-wide": FakeKernel.random(rng, 5, 4),
    }


@pytest.fixture
def fake() -> Iterator[Tuple[FakeHost, str]]:
    """A fake host on loopback TCP: (host, url)."""
    host = FakeHost(make_kernels())
    url = host.start_tcp()
    try:
        yield host, url
    finally:
        host.stop()


@pytest.fixture
def unix_fake() -> Iterator[Tuple[FakeHost, str]]:
    """A fake host on a Unix socket: (host, unix:// url)."""
    host = FakeHost(make_kernels())
    with tempfile.TemporaryDirectory(prefix="kh-") as d:
        url = host.start_unix(os.path.join(d, "host.sock"))
        try:
            yield host, url
        finally:
            host.stop()


if os.environ.get("KASMINA_REQUIRE_TORCH") == "1":
    importlib.import_module("torch")  # CI: a missing PyTorch fails the run instead of skipping its tests
