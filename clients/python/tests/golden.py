"""Golden kernel cases (kernels/testdata/golden/README.md) for the
real-binary tests: a reader of esper-kernel/v1 safetensors files (standard
library and NumPy: nothing is unpickled) and the case's module rebuilt in
PyTorch from its module graph and the kernel's own weights."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: str) -> Tuple[Dict[str, Tuple[str, np.ndarray]], Dict[str, str]]:
    """Tensors as (dtype name, array) and the metadata of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        raw = body[b:e]
        if h["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[h["dtype"]]).newbyteorder("<"))
        tensors[name] = (h["dtype"], arr.reshape(h["shape"]))
    return tensors, meta


def build(m: Dict[str, Any]):
    """The torch.nn module of a module graph node (the ops the golden cases use)."""
    import torch
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
        raise ValueError(f"module type {t!r}: this test's rebuild does not know it")
    return simple[t]()


@dataclass
class Case:
    """One golden case folder."""

    root: str  # the --kernels directory the case lies in
    name: str  # its folder name
    input_shape: List[int]  # with batch
    output_shape: List[int]
    tolerance: float
    module: Dict[str, Any]
    tensors: Dict[str, Tuple[str, np.ndarray]]
    x: np.ndarray  # float32 input from io.safetensors
    expected: np.ndarray  # PyTorch's float64 output for x
    grad_output: np.ndarray  # float32, the output's shape

    @property
    def artifact(self) -> str:
        """The artifact_id the host resolves against its --kernels directory."""
        return f"{self.name}/kernel.safetensors"

    def model(self, dtype):
        """The module in eval() mode with the kernel's weights (F64 weights
        rounded to float32 for float32, as the host's loader does)."""
        import torch
        net = build(self.module).to(dtype).eval()
        state = {}
        for name, (st, arr) in self.tensors.items():
            if st in ("I64", "I32"):
                state[name] = torch.from_numpy(arr.astype(np.int64))
            elif dtype == torch.float64:
                state[name] = torch.from_numpy(arr.astype(np.float64))
            else:
                state[name] = torch.from_numpy(arr.astype(np.float32))
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise ValueError(f"{self.name}: state_dict mismatch: missing {missing}, unexpected {unexpected}")
        return net


def load_cases(root: str) -> List[Case]:
    """Every case folder (with case.json) under ``root``, by name."""
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "case.json")):
            continue
        with open(os.path.join(d, "case.json")) as f:
            case = json.load(f)
        tensors, meta = read_safetensors(os.path.join(d, "kernel.safetensors"))
        module = json.loads(meta["esper.module"]) if "esper.module" in meta else case["module"]
        io, _ = read_safetensors(os.path.join(d, "io.safetensors"))
        x = io["input"][1].astype(np.float32)
        expected = io["expected"][1].astype(np.float64)
        go: Optional[np.ndarray] = None
        if os.path.isfile(os.path.join(d, "grad.safetensors")):
            grads, _ = read_safetensors(os.path.join(d, "grad.safetensors"))
            go = grads["grad_output"][1].astype(np.float32)
        if go is None:  # a set without grad.safetensors: the same seeded draw as make_grads.py
            seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
            go = np.random.default_rng(seed).standard_normal(case["output_shape"]).astype(np.float32)
        out.append(Case(root=root, name=name, input_shape=case["input_shape"], output_shape=case["output_shape"],
                        tolerance=float(case["tolerance"]), module=module, tensors=tensors, x=x, expected=expected,
                        grad_output=go))
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖₂ / ‖b‖₂ (the absolute norm when b is zero)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    d = float(np.linalg.norm(a - b))
    n = float(np.linalg.norm(b))
    return d / n if n > 0 else d
