"""PyTorch CPU side of bench/kernels/run.sh: the same kernels as the Go
benchmarks in kernels/bench_test.go, timed the same way (eval mode, no_grad,
a steady stream of same-shaped calls). Each kernel is timed as SAMPLES short
samples of about SECONDS each (mean ns per call within a sample), so that the
caller can take the fastest sample, as it does for Go's -count runs.
Prints one JSON object per kernel.

Usage: torch_bench.py [SAMPLES [SECONDS [THREADS]]] (THREADS: torch.set_num_threads;
0 or absent keeps PyTorch's choice; OpenBLAS keeps its own pool, reported as openblas.threads)"""
import ctypes
import json
import sys
import time

import torch


def openblas_info():
    """Kernel family, build and thread count of the OpenBLAS in this process
    (the libopenblas.so.0 that PyTorch's BLAS calls resolve to on Debian)."""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        lib.openblas_get_config.restype = ctypes.c_char_p
        return {"core": lib.openblas_get_corename().decode(), "config": lib.openblas_get_config().decode(),
                "threads": lib.openblas_get_num_threads()}
    except (OSError, AttributeError):
        return None


def bench(name, module, batch, in_features, macs_per_sample, samples, seconds):
    module.eval()
    x = torch.randn(batch, in_features)
    out = []
    with torch.no_grad():
        for _ in range(20):
            module(x)
        t0 = time.perf_counter()
        module(x)
        one = max(time.perf_counter() - t0, 1e-7)
        per = max(1, int(seconds / one))
        for _ in range(samples):
            start = time.perf_counter()
            for _ in range(per):
                module(x)
            out.append((time.perf_counter() - start) / per * 1e9)
    best = min(out)
    print(json.dumps({"name": name, "ns_per_op": best, "samples_ns": out,
                      "gflops": 2 * macs_per_sample * batch / best,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "openblas": openblas_info()}), flush=True)


def main():
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    if len(sys.argv) > 3 and int(sys.argv[3]) > 0:
        torch.set_num_threads(int(sys.argv[3]))
    torch.manual_seed(0)
    bench("SeedLinear64ReLUBatch1", torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()), 1, 64, 64 * 64, samples, seconds)
    bench("Linear512ReLUBatch32", torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU()), 32, 512, 512 * 512, samples, seconds)


if __name__ == "__main__":
    main()
