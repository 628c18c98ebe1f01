#!/usr/bin/python3
"""Times PyTorch on the shapes of kernels/gemm's BenchmarkShapes and prints
one line per sample: "<name> <GFLOP/s> <us/call>". Each shape is timed as
SAMPLES samples of about SECONDS each (the mean within a sample), so that
table.py can take the fastest and the median sample, as it does for the Go
side's go test -count runs.

Usage: torch_bench.py [THREADS [SAMPLES [SECONDS]]]
THREADS: torch.set_num_threads; 0 (the default) keeps PyTorch's own choice.
OpenBLAS sizes its own pool either way."""
import ctypes
import sys
import time

import torch

SHAPES = [  # name, linear?, m (batch), n (out), k (in)
    ("linear64x64_b1", True, 1, 64, 64),
    ("linear512x512_b32", True, 32, 512, 512),
    ("linear1024x1024_b256", True, 256, 1024, 1024),
    ("matmul2048", False, 2048, 2048, 2048),
]


def openblas_info():
    """'core=… threads=…' of the OpenBLAS in this process, or ''."""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return f"OpenBLAS core={lib.openblas_get_corename().decode()} threads={lib.openblas_get_num_threads()}"
    except (OSError, AttributeError):
        return ""


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__} threads={torch.get_num_threads()} {openblas_info()}", flush=True)
    with torch.no_grad():
        for name, linear, m, n, k in SHAPES:
            if linear:
                x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
                f = lambda: torch.relu(torch.nn.functional.linear(x, w, b))
            else:
                a, bm = torch.randn(m, k), torch.randn(k, n)
                f = lambda: torch.mm(a, bm)
            f()
            t0 = time.perf_counter()
            f()
            per = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
            for _ in range(samples):
                t0 = time.perf_counter()
                for _ in range(per):
                    f()
                el = (time.perf_counter() - t0) / per
                print(f"{name} {2 * m * n * k / el / 1e9:.2f} {el * 1e6:.2f}", flush=True)


if __name__ == "__main__":
    main()
