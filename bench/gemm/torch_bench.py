#!/usr/bin/python3
"""Times PyTorch on the shapes of kernels/gemm's BenchmarkShapes and prints
one line per shape: "<name> <GFLOP/s> <us/call>" (best of several rounds)."""
import os
import sys
import time

import torch

SHAPES = [  # name, linear?, m (batch), n (out), k (in)
    ("linear64x64_b1", True, 1, 64, 64),
    ("linear512x512_b32", True, 32, 512, 512),
    ("linear1024x1024_b256", True, 256, 1024, 1024),
    ("matmul2048", False, 2048, 2048, 2048),
]


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, linear, m, n, k in SHAPES:
            if linear:
                x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
                f = lambda: torch.relu(torch.nn.functional.linear(x, w, b))
            else:
                a, bm = torch.randn(m, k), torch.randn(k, n)
                f = lambda: torch.mm(a, bm)
            f()
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                calls = 0
                while True:
                    f()
                    calls += 1
                    el = time.perf_counter() - t0
                    if el > 0.2:
                        break
                best = min(best, el / calls)
            print(f"{name} {2 * m * n * k / best / 1e9:.2f} {best * 1e6:.2f}", flush=True)


if __name__ == "__main__":
    main()
