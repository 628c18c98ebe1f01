"""Per-request time of the Python client against a real kasmina-host.

    /usr/bin/python3 clients/python/bench/bench_layer.py [--bin PATH] [--case golden-1-000] [--n 2000] [--batch B]

Starts ``kasmina-host serve --listen-unix`` on the golden kernels (the
binary: --bin, $KASMINA_HOST_BIN, or built with go build), declares a
layer holding the case's kernel at alpha 0.5, and measures side by side,
in interleaved rounds of one run:

1. ``Client.forward`` (x and default, no kept forward) over the Unix socket
   and over loopback TCP with the tensors in the request body
   (``shared_memory=False``), and over the Unix socket with the inputs in
   system shared memory (``shared_memory=True``; the output comes in the
   answer, as a layer's do);
2. forward + ``loss.backward()`` through ``KasminaHostLayer`` (Unix socket)
   and through the same blend computed in-process by PyTorch's autograd.

Prints a Markdown table of p50 and p99 in microseconds and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden import load_cases  # noqa: E402
from kasmina_host import Client  # noqa: E402
from kasmina_host.torch import KasminaHostLayer  # noqa: E402
from realhost import GOLDEN, HostProcess, host_binary  # noqa: E402

ALPHA = 0.5


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("KASMINA_HOST_BIN"))
    ap.add_argument("--case", default="golden-1-000")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=0, help="repeat the case's input to this batch (default: the case's)")
    args = ap.parse_args()
    if args.bin:
        os.environ["KASMINA_HOST_BIN"] = args.bin
    case = next(c for c in load_cases(GOLDEN) if c.name == args.case)
    if len(case.input_shape) != 2 or len(case.output_shape) != 2:
        sys.exit(f"{args.case}: pick a flat case ([batch, n] → [batch, m])")
    binary = host_binary(tempfile.mkdtemp(prefix="kh-bench-"))
    host = HostProcess(binary, GOLDEN)
    try:
        unix, tcp = Client(host.unix_url, shared_memory=False), Client(host.tcp_url, shared_memory=False)
        shm = Client(host.unix_url, shared_memory=True)
        n_in, n_out = case.input_shape[1], case.output_shape[1]
        layer = KasminaHostLayer(n_in, n_out, layer_name="bench", client=unix, sync_interval=None)
        asyncio.run(layer.load_kernel(0, case.artifact, alpha=ALPHA))
        x = case.x
        if args.batch:
            x = np.resize(x, (args.batch,) + x.shape[1:])
        d = layer.default_transform(torch.from_numpy(x)).detach().numpy()

        module = case.model(torch.float32)
        default = layer.default_transform

        def in_process(xt):
            return (1 - ALPHA) * default(xt) + ALPHA * module(xt)

        times = {k: [] for k in ("unix", "tcp", "shm", "layer", "torch")}
        clients = (("unix", unix), ("tcp", tcp), ("shm", shm))
        for _ in range(50):  # warm-up
            for _, client in clients:
                client.forward("bench", x, default=d)
        for _ in range(args.n):
            for name, client in clients:
                t = time.perf_counter_ns()
                client.forward("bench", x, default=d)
                times[name].append(time.perf_counter_ns() - t)
            for name, fn in (("layer", layer), ("torch", in_process)):
                xt = torch.from_numpy(x.copy()).requires_grad_(True)
                t = time.perf_counter_ns()
                fn(xt).sum().backward()
                times[name].append(time.perf_counter_ns() - t)
        print(f"{args.case}: batch {x.shape[0]}, {list(case.input_shape[1:])} → {list(case.output_shape[1:])}, "
              f"n = {args.n}, torch threads {torch.get_num_threads()}\n")
        print("| what | p50 µs | p99 µs |")
        print("| --- | --- | --- |")
        rows = [("forward, Unix socket", "unix"), ("forward, loopback TCP", "tcp"),
                ("forward, Unix socket, inputs in shared memory", "shm"),
                ("forward + backward, KasminaHostLayer (Unix socket)", "layer"),
                ("forward + backward, PyTorch in-process", "torch")]
        for label, key in rows:
            print(f"| {label} | {pct(times[key], 0.5):.1f} | {pct(times[key], 0.99):.1f} |")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nUnix / TCP forward: {med['unix'] / med['tcp']:.2f}; Unix / Unix with shared memory: "
              f"{med['unix'] / med['shm']:.2f}; "
              f"host layer / in-process forward+backward: {med['layer'] / med['torch']:.1f}")
    finally:
        host.stop()


if __name__ == "__main__":
    main()
