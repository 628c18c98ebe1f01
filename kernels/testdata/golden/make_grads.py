"""Writes grad.safetensors into every golden case: PyTorch's reference
gradients of the input for a fixed grad_output.

    /usr/bin/python3 kernels/testdata/golden/make_grads.py [CASES_DIR]

CASES_DIR defaults to the folder of this script. For each case folder
(one with case.json, kernel.safetensors and io.safetensors) it

  1. reads the kernel's tensors and module graph (safetensors parsed here
     with the standard library and NumPy: nothing is unpickled),
  2. builds the same torch.nn.Sequential twice, in float64 (the weights
     exactly as stored, widened) and in float32 (the weights converted to
     float32 as the Go loader does: F16/BF16 exactly, F64 rounded to
     nearest), both in eval() mode,
  3. draws grad_output ~ N(0, 1) in float32 from a generator seeded by the
     case id (so the file is reproducible),
  4. runs autograd: grad_input = d(sum(output * grad_output)) / d input, in
     float64 (the reference) and in float32 (PyTorch's own float32 result),

and writes grad.safetensors with the tensors

    grad_output  F32 [batch, *output_shape]
    grad_input   F64 [batch, *input_shape]   (the float64 reference)

and the metadata torch_float32_rel_error (||g32 - g64|| / ||g64||, as a
decimal string), torch_version and seed. The float64 forward output is
checked against io.safetensors' expected output first, so a module built
differently from the one the case was made from is caught.
"""
import hashlib
import json
import os
import struct
import sys

import numpy as np

try:
    import torch
except ImportError:  # reading cases (read_safetensors) needs only NumPy, as clients/python/tests/golden.py does
    torch = None

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        raw = body[b:e]
        if h["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[h["dtype"]]).newbyteorder("<"))
        tensors[name] = (h["dtype"], arr.reshape(h["shape"]))
    return tensors, meta


def write_safetensors(path, tensors, meta):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, arr in tensors:
        dtype = {np.dtype("float32"): "F32", np.dtype("float64"): "F64"}[arr.dtype]
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def build(m):
    t = m["type"]
    if t == "sequential":
        return torch.nn.Sequential(*[build(l) for l in m["layers"]])
    if t == "linear":
        return torch.nn.Linear(m["in_features"], m["out_features"], bias=m.get("bias", True))
    if t == "conv2d":
        return torch.nn.Conv2d(m["in_channels"], m["out_channels"], m["kernel_size"], stride=m.get("stride", 1),
                               padding=m.get("padding", 0), dilation=m.get("dilation", 1), groups=m.get("groups", 1),
                               bias=m.get("bias", True))
    if t in ("batchnorm1d", "batchnorm2d"):
        cls = torch.nn.BatchNorm1d if t == "batchnorm1d" else torch.nn.BatchNorm2d
        return cls(m["num_features"], eps=m.get("eps", 1e-5), affine=m.get("affine", True))
    if t == "layernorm":
        return torch.nn.LayerNorm(m["normalized_shape"], eps=m.get("eps", 1e-5),
                                  elementwise_affine=m.get("elementwise_affine", True))
    if t == "adaptive_avg_pool2d":
        size = m["output_size"]
        return torch.nn.AdaptiveAvgPool2d(tuple(size) if isinstance(size, list) else size)
    if t == "gelu":
        return torch.nn.GELU(approximate=m.get("approximate", "none"))
    if t == "dropout":
        return torch.nn.Dropout(m.get("p", 0.5))
    if t == "flatten":
        return torch.nn.Flatten(m.get("start_dim", 1), m.get("end_dim", -1))
    simple = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity}
    if t not in simple:
        raise ValueError(f"module type {t!r}: this rebuild does not know it")
    return simple[t]()


def model(module, tensors, dtype):
    net = build(module).to(dtype).eval()
    state = {}
    for name, (st_dtype, arr) in tensors.items():
        if st_dtype in ("I64", "I32"):
            state[name] = torch.from_numpy(arr.astype(np.int64))
        elif dtype == torch.float64:
            state[name] = torch.from_numpy(arr.astype(np.float64))
        else:
            state[name] = torch.from_numpy(arr.astype(np.float32))  # F64 rounds to nearest
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
    return net


def grad(net, x, go, dtype):
    x = torch.from_numpy(x).to(dtype).requires_grad_(True)
    y = net(x)
    y.backward(torch.from_numpy(go).to(dtype))
    return y.detach().numpy(), x.grad.numpy()


def rel(a, b):
    d = np.linalg.norm((a.astype(np.float64) - b).ravel())
    n = np.linalg.norm(b.ravel())
    return d / n if n > 0 else d


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.set_num_threads(1)
    cases = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "case.json")))
    for cid in cases:
        d = os.path.join(root, cid)
        with open(os.path.join(d, "case.json")) as f:
            case = json.load(f)
        tensors, meta = read_safetensors(os.path.join(d, "kernel.safetensors"))
        module = json.loads(meta["esper.module"])
        io, _ = read_safetensors(os.path.join(d, "io.safetensors"))
        x = io["input"][1].astype(np.float32)
        expected = io["expected"][1].astype(np.float64)
        seed = int.from_bytes(hashlib.sha256(cid.encode()).digest()[:8], "little")
        go = np.random.default_rng(seed).standard_normal(case["output_shape"]).astype(np.float32)
        y64, g64 = grad(model(module, tensors, torch.float64), x, go, torch.float64)
        if rel(y64, expected) > 1e-12:
            raise SystemExit(f"{cid}: the rebuilt module's float64 output differs from io.safetensors ({rel(y64, expected):.3g})")
        _, g32 = grad(model(module, tensors, torch.float32), x, go, torch.float32)
        err = rel(g32, g64)
        write_safetensors(os.path.join(d, "grad.safetensors"), [("grad_output", go), ("grad_input", g64)],
                          {"torch_float32_rel_error": repr(float(err)), "torch_version": torch.__version__,
                           "seed": str(seed)})
        print(f"{cid}: grad_input {list(g64.shape)}, torch float32 relative error {err:.3g}")


if __name__ == "__main__":
    main()
