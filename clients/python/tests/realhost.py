"""A real ``kasmina-host serve`` (and a real redis-server) for the
real-binary tests.

The binary is ``$KASMINA_HOST_BIN``, else built from this checkout with
``go build`` into a temporary folder once per session. Without one (no
Go, a binary without ``--listen-unix``) the tests that need it are skipped
with the reason; with ``KASMINA_REQUIRE_HOST=1`` (CI) they fail instead.
``KASMINA_REQUIRE_REDIS=1`` does the same for redis-server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest

from kasmina_host import Client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GOLDEN = os.path.join(REPO, "kernels", "testdata", "golden")
WAIT = 30.0  # bound on every wait for a process to come up
_built: Optional[str] = None  # the binary go build made this session


def _missing(what: str, env: str) -> None:
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} ({env}=1: required here)")
    pytest.skip(f"SKIPPED: {what}")


def host_binary(tmpdir: str, unix: bool = True) -> str:
    """The kasmina-host binary to test; skips (or fails) when there is none,
    or (``unix``) when it lacks the #15 host side (``--listen-unix``)."""
    path = os.environ.get("KASMINA_HOST_BIN")
    if path:
        if not os.access(path, os.X_OK):
            pytest.fail(f"KASMINA_HOST_BIN={path} is not an executable file")
    else:
        go = shutil.which("go")
        if go is None or not os.path.isfile(os.path.join(REPO, "go.mod")):
            _missing("no kasmina-host binary: set KASMINA_HOST_BIN, or run from a checkout with Go installed",
                     "KASMINA_REQUIRE_HOST")
        global _built
        if _built is None:  # once per session
            path = os.path.join(tmpdir, "kasmina-host")
            out = subprocess.run([go, "build", "-o", path, "./cmd/kasmina-host"], cwd=REPO, capture_output=True,
                                 text=True, timeout=900)
            if out.returncode != 0:
                pytest.fail(f"go build ./cmd/kasmina-host failed:\n{out.stderr[-4000:]}")
            _built = path
        path = _built
    usage = subprocess.run([path, "serve", "-h"], capture_output=True, text=True, timeout=60)
    if unix and "listen-unix" not in usage.stdout + usage.stderr:
        _missing(f"{path} has no --listen-unix: the host side of #15 (layers, layer forward) is not in this build",
                 "KASMINA_REQUIRE_HOST")
    return path


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _clean_env() -> dict:
    drop = ("KASMINA_", "REDIS_URL", "URZA_URL", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


class HostProcess:
    """``kasmina-host serve`` on a free loopback port and (``unix``) a Unix socket."""

    def __init__(self, binary: str, kernels: str, args: Optional[List[str]] = None, unix: bool = True) -> None:
        self.unix = unix
        self.dir = tempfile.mkdtemp(prefix="kh-real-")
        self.socket = os.path.join(self.dir, "host.sock")
        self.bus_file = os.path.join(self.dir, "bus.jsonl")
        self.log_path = os.path.join(self.dir, "stderr.log")
        for attempt in range(4):
            self.port = free_port()
            # No gRPC listener: its default port would keep a second host
            # (or one already running on this machine) from starting.
            cmd = [binary, "serve", "--addr", f"127.0.0.1:{self.port}", "--kernels", kernels, "--grpc-addr", "",
                   "--bus-file", self.bus_file, "--host-id", "pytest", "--exit-timeout", "10s"]
            cmd += (["--listen-unix", self.socket] if unix else []) + list(args or [])
            self._log = open(self.log_path, "w")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log, env=_clean_env())
            try:
                self._wait_ready()
                break
            except RuntimeError:
                self.stop()
                if attempt < 3 and "address already in use" in self.log():
                    continue
                raise
        self.unix_url = f"unix://{self.socket}"
        self.tcp_url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        last: Exception = RuntimeError("no answer yet")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kasmina-host exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            url = f"unix://{self.socket}" if self.unix else f"http://127.0.0.1:{self.port}"
            if not self.unix or os.path.exists(self.socket):
                try:
                    if Client(url, timeout=5).ready():
                        return
                except ConnectionError as e:
                    last = e
            time.sleep(0.05)
        raise RuntimeError(f"kasmina-host not ready within {WAIT}s ({last}):\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class RedisProcess:
    """redis-server on a free loopback port, nothing saved."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            _missing("redis-server is not installed (apt-get install redis-server)", "KASMINA_REQUIRE_REDIS")
        try:
            import redis
        except ImportError:
            _missing("redis-py is not installed (apt-get install python3-redis)", "KASMINA_REQUIRE_REDIS")
        for attempt in range(4):
            self.port = free_port()
            self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            self.stop()
            if attempt == 3:
                pytest.fail(f"redis-server did not start on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
