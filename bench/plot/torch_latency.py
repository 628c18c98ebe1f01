#!/usr/bin/python3
"""PyTorch CPU latency of relu(linear(x, w, b)) per batch size, with the
weights mkinputs wrote. Prints one JSON line per batch: {"batch", "p50_us",
"p99_us", "calls"}. Usage: torch_latency.py DIR THREADS BATCH... [--ms MS]"""
import json
import struct
import sys
import time

import torch
import torch.nn.functional as F


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    hdr = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = torch.frombuffer(bytearray(body[a:b]), dtype=torch.float32).reshape(t["shape"])
    return out


def main():
    args = sys.argv[1:]
    ms = 300.0
    if "--ms" in args:
        i = args.index("--ms")
        ms = float(args[i + 1])
        del args[i : i + 2]
    d, threads, batches = args[0], int(args[1]), [int(b) for b in args[2:]]
    torch.set_num_threads(threads)
    wts = read_safetensors(f"{d}/weights.safetensors")
    w, b = wts["0.weight"], wts["0.bias"]
    with torch.inference_mode():
        for n in batches:
            x = read_safetensors(f"{d}/input-b{n}.safetensors")["input"]
            for _ in range(20):
                F.relu(F.linear(x, w, b))
            lat = []
            end = time.perf_counter() + ms / 1000
            while time.perf_counter() < end or len(lat) < 20:
                t0 = time.perf_counter_ns()
                F.relu(F.linear(x, w, b))
                lat.append(time.perf_counter_ns() - t0)
            lat.sort()
            print(json.dumps({"batch": n, "p50_us": lat[len(lat) // 2] / 1000,
                              "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000, "calls": len(lat)}))


main()
