"""PyTorch CPU side of bench/kernels/run.sh: the same kernels as the Go
benchmarks in kernels/bench_test.go, timed the same way (eval mode, no_grad,
a steady stream of same-shaped calls). Prints one JSON object per kernel."""
import json
import sys
import time

import torch


def bench(name, module, batch, in_features, macs_per_sample, min_seconds=1.0):
    module.eval()
    x = torch.randn(batch, in_features)
    with torch.no_grad():
        for _ in range(200):
            module(x)
        n, start = 0, time.perf_counter()
        while True:
            for _ in range(100):
                module(x)
            n += 100
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
    ns = elapsed / n * 1e9
    print(json.dumps({"name": name, "ns_per_op": ns,
                      "gflops": 2 * macs_per_sample * batch / ns,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


def main():
    torch.manual_seed(0)
    bench("SeedLinear64ReLUBatch1", torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()), 1, 64, 64 * 64)
    bench("Linear512ReLUBatch32", torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU()), 32, 512, 512 * 512)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
