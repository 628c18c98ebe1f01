"""PyTorch in-process autograd on the layer blend the host computes.

    /usr/bin/python3 bench/layer/torch_layer.py [N] [CASE...]

For each golden case (default golden-1-001 golden-1-000): the case's module
(rebuilt from the kernel file by kernels/testdata/golden/make_grads.py, float32,
eval mode) as one seed at alpha 0.5 (bench/layer's Alpha), with a default
tensor that requires grad: y = (1 − 0.5)·default + 0.5·module(x), then
y.backward(grad_output), N times after a warm-up. Prints one line per case:
"CASE torch-ns/op MEAN" (the mean per forward + backward, the Go benchmark's
unit) and the median. torch uses one thread, as the host serves one request
on one core.
"""

import json
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.environ.get("KERNEL_GOLDEN_DIR", os.path.join(HERE, "..", "..", "kernels", "testdata", "golden"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "kernels", "testdata", "golden"))

import make_grads  # noqa: E402

ALPHA = 0.5


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    cases = sys.argv[2:] or ["golden-1-001", "golden-1-000"]
    torch.set_num_threads(1)
    for cid in cases:
        d = os.path.join(GOLDEN, cid)
        tensors, meta = make_grads.read_safetensors(os.path.join(d, "kernel.safetensors"))
        net = make_grads.model(json.loads(meta["esper.module"]), tensors, torch.float32)
        io, _ = make_grads.read_safetensors(os.path.join(d, "io.safetensors"))
        gf, _ = make_grads.read_safetensors(os.path.join(d, "grad.safetensors"))
        x = torch.from_numpy(io["input"][1].astype(np.float32).copy())
        go = torch.from_numpy(gf["grad_output"][1].astype(np.float32).copy())
        # the same default as bench/layer's requests
        default = torch.tensor([(i % 13) / 13 - 0.5 for i in range(go.numel())], dtype=torch.float32).reshape(go.shape)

        def step():
            xt = x.clone().requires_grad_(True)
            dt = default.clone().requires_grad_(True)
            y = (1 - ALPHA) * dt + ALPHA * net(xt)
            y.backward(go)
            return xt.grad, dt.grad

        for _ in range(50):
            step()
        times = []
        for _ in range(n):
            t = time.perf_counter_ns()
            step()
            times.append(time.perf_counter_ns() - t)
        print(f"{cid} torch-ns/op {statistics.fmean(times):.0f} median {statistics.median(times):.0f}")


if __name__ == "__main__":
    main()
