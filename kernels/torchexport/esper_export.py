#!/usr/bin/env python3
"""Export a torch.nn.Sequential as an esper-kernel/v1 file.

The Kasmina host executes kernels in the portable ``esper-kernel/v1`` format
(a safetensors file whose metadata holds the module graph; see
KERNEL_FORMAT.md in the Kasmina host repository). This module is what a kernel
producer (Esper's compiler side, or a person) uses to make one from PyTorch:

    import torch, esper_export
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    meta = esper_export.export(model, "seed.safetensors", input_shape=[64],
                               kernel_id="seed-linear-64", blueprint_id="bp-1")

Only the format's operations are accepted: Linear, Conv2d, BatchNorm1d/2d,
LayerNorm, ReLU, Tanh, Sigmoid, GELU, Identity, Dropout, Flatten,
AdaptiveAvgPool2d and nested Sequential, matched by exact type (a subclass may
override forward, so it is refused). Anything else is refused by name and
position: ``unsupported module 'LSTM' at '3'``.

It needs only the standard library and torch; the safetensors file is written
here with struct and json, byte for byte in the layout of the reference
(golden) kernels: the header is compact JSON with ``__metadata__`` first,
tensors in state_dict order, padded with spaces to a multiple of 8 bytes.

Run ``python3 esper_export.py --help`` for the command line.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import importlib
import json
import math
import os
import struct
import sys
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

FORMAT = "esper-kernel/v1"
# The compilation_target the reference kernels declare: a safetensors file,
# which the host executes itself (torchscript and pickle are refused).
COMPILATION_TARGET = "safetensors"

DTYPES = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F64": (torch.float64, 8),
}

__all__ = [
    "UnsupportedModuleError",
    "module_graph",
    "export",
    "export_bytes",
    "compiled_kernel",
    "write_safetensors",
    "read_safetensors",
    "write_case",
    "write_reference",
]


class UnsupportedModuleError(ValueError):
    """A module (or a setting of one) that esper-kernel/v1 cannot express."""

    def __init__(self, type_name: str, path: str, detail: str = ""):
        self.type_name = type_name
        self.path = path
        msg = f"unsupported module {type_name!r} at {path!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


def _pair(v: Any, what: str, type_name: str, path: str) -> List[int]:
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return [int(v[0]), int(v[1])]
    raise UnsupportedModuleError(type_name, path, f"{what}={v!r} is not an int or a pair of ints")


def _conv2d(m: nn.Conv2d, path: str) -> Dict[str, Any]:
    name = type(m).__name__
    if m.padding_mode != "zeros":
        raise UnsupportedModuleError(name, path, f"padding_mode={m.padding_mode!r} (only 'zeros')")
    kh, kw = _pair(m.kernel_size, "kernel_size", name, path)
    dil = _pair(m.dilation, "dilation", name, path)
    stride = _pair(m.stride, "stride", name, path)
    pad = m.padding
    if isinstance(pad, str):
        if pad == "valid":
            pad = [0, 0]
        else:  # "same": stride 1; representable when the total padding is even
            totals = [dil[0] * (kh - 1), dil[1] * (kw - 1)]
            if any(t % 2 for t in totals):
                raise UnsupportedModuleError(name, path, "padding='same' needs asymmetric padding here")
            pad = [totals[0] // 2, totals[1] // 2]
    pad = _pair(pad, "padding", name, path)
    return {
        "type": "conv2d",
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": [kh, kw],
        "stride": stride,
        "padding": pad,
        "dilation": dil,
        "groups": m.groups,
        "bias": m.bias is not None,
    }


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, path: str, kind: str) -> Dict[str, Any]:
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        # Without running statistics eval() normalises with the batch's own
        # statistics, which the format does not express.
        raise UnsupportedModuleError(type(m).__name__, path, "track_running_stats=False")
    return {"type": kind, "num_features": m.num_features, "eps": float(m.eps), "affine": bool(m.affine)}


def _layernorm(m: nn.LayerNorm, path: str) -> Dict[str, Any]:
    if m.elementwise_affine and getattr(m, "bias", None) is None:
        raise UnsupportedModuleError("LayerNorm", path, "elementwise_affine without bias")
    return {
        "type": "layernorm",
        "normalized_shape": [int(d) for d in m.normalized_shape],
        "eps": float(m.eps),
        "elementwise_affine": bool(m.elementwise_affine),
    }


def _flatten(m: nn.Flatten, path: str) -> Dict[str, Any]:
    return {"type": "flatten", "start_dim": int(m.start_dim), "end_dim": int(m.end_dim)}


def _pool(m: nn.AdaptiveAvgPool2d, path: str) -> Dict[str, Any]:
    size = m.output_size
    if isinstance(size, int):
        size = [size, size]
    size = list(size)
    if len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise UnsupportedModuleError("AdaptiveAvgPool2d", path, f"output_size={m.output_size!r} (None is not supported)")
    return {"type": "adaptive_avg_pool2d", "output_size": size}


def _gelu(m: nn.GELU, path: str) -> Dict[str, Any]:
    approx = getattr(m, "approximate", "none")
    if approx not in ("none", "tanh"):
        raise UnsupportedModuleError("GELU", path, f"approximate={approx!r}")
    return {"type": "gelu", "approximate": approx}


# Exact types only: a subclass can change forward() and still look the same.
_CONVERTERS = {
    nn.Linear: lambda m, p: {"type": "linear", "in_features": m.in_features,
                             "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: _conv2d,
    nn.BatchNorm1d: lambda m, p: _batchnorm(m, p, "batchnorm1d"),
    nn.BatchNorm2d: lambda m, p: _batchnorm(m, p, "batchnorm2d"),
    nn.LayerNorm: _layernorm,
    nn.ReLU: lambda m, p: {"type": "relu"},
    nn.Tanh: lambda m, p: {"type": "tanh"},
    nn.Sigmoid: lambda m, p: {"type": "sigmoid"},
    nn.GELU: _gelu,
    nn.Identity: lambda m, p: {"type": "identity"},
    nn.Dropout: lambda m, p: {"type": "dropout", "p": float(m.p)},
    nn.Flatten: _flatten,
    nn.AdaptiveAvgPool2d: _pool,
}


def module_graph(model: nn.Module, path: str = "") -> Dict[str, Any]:
    """Return the esper.module graph of a Sequential, refusing anything else.

    ``path`` is the dotted position, as in state_dict names ('3', '1.0').
    """
    if type(model) is not nn.Sequential:
        raise UnsupportedModuleError(type(model).__name__, path or "<root>",
                                     "the root must be a torch.nn.Sequential" if not path else "")
    layers = []
    for name, child in model.named_children():
        child_path = f"{path}.{name}" if path else name
        if type(child) is nn.Sequential:
            layers.append(module_graph(child, child_path))
            continue
        conv = _CONVERTERS.get(type(child))
        if conv is None:
            raise UnsupportedModuleError(type(child).__name__, child_path)
        if child._forward_hooks or child._forward_pre_hooks:
            raise UnsupportedModuleError(type(child).__name__, child_path, "forward hooks cannot be exported")
        layers.append(conv(child, child_path))
    if model._forward_hooks or model._forward_pre_hooks:
        raise UnsupportedModuleError("Sequential", path or "<root>", "forward hooks cannot be exported")
    return {"type": "sequential", "layers": layers}


def _positional(model: nn.Sequential) -> nn.Sequential:
    """model with every Sequential's children named by position, sharing the
    same leaf modules: the format names tensors '0.weight', '1.0.bias', while
    a Sequential built from an OrderedDict names them 'fc.weight'."""
    children = [(_positional(c) if type(c) is nn.Sequential else c) for c in model.children()]
    if all(name == str(i) for i, name in enumerate(n for n, _ in model.named_children())) and \
            all(a is b for a, b in zip(children, model.children())):
        return model
    out = nn.Sequential(*children)
    out.train(model.training)
    return out


def _tensors(model: nn.Module, dtype: str) -> List[Tuple[str, str, List[int], bytes]]:
    """state_dict tensors in order, converted to dtype; integer buffers
    (num_batches_tracked) are left out as the format allows."""
    torch_dtype, _ = DTYPES[dtype]
    out = []
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        t = t.detach().to("cpu", torch_dtype).contiguous()
        if torch_dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes()
        if sys.byteorder != "little":
            raise RuntimeError("esper-kernel/v1 tensors are little-endian; exporting on a big-endian host is not supported")
        out.append((name, dtype, list(t.shape), raw))
    return out


def write_safetensors(tensors: Sequence[Tuple[str, str, List[int], bytes]],
                      metadata: Optional[Dict[str, str]] = None) -> bytes:
    """Serialize tensors ((name, dtype, shape, little-endian bytes)) and string
    metadata as a safetensors file, in the reference kernels' layout."""
    header: Dict[str, Any] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise TypeError(f"metadata {k!r} must be a string, got {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, raw in tensors:
        if name == "__metadata__" or name in header:
            raise ValueError(f"duplicate or reserved tensor name {name!r}")
        size = DTYPES[dtype][1] * math.prod(shape)
        if size != len(raw):
            raise ValueError(f"tensor {name!r}: {len(raw)} bytes for shape {shape} {dtype} (want {size})")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    return b"".join([struct.pack("<Q", len(hb)), hb] + [raw for _, _, _, raw in tensors])


def read_safetensors(data: bytes) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Parse a safetensors file (metadata, float tensors as float64)."""
    if len(data) < 8:
        raise ValueError("file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"header length {n} runs past the end of the {len(data)}-byte file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        torch_dtype, _ = DTYPES[info["dtype"]]
        raw = bytearray(body[b:e])
        if torch_dtype == torch.bfloat16:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(raw, dtype=torch_dtype)
        out[name] = t.reshape(info["shape"]).to(torch.float64)
    return meta, out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _activation_estimate(model: nn.Sequential, input_shape: Sequence[int]) -> Tuple[List[int], int, int]:
    """Run one zero sample through the model; return the output shape, the
    largest intermediate activation and the largest im2col scratch, in
    elements per sample."""
    sizes: List[int] = []
    scratch = 0

    def hook(mod, inp, out):
        nonlocal scratch
        sizes.append(out[0].numel())
        if type(mod) is nn.Conv2d:
            oh, ow = out.shape[-2:]
            kh, kw = mod.kernel_size
            scratch = max(scratch, (mod.in_channels // mod.groups) * kh * kw * oh * ow)

    leaves = [m for m in model.modules() if type(m) is not nn.Sequential]
    handles = [m.register_forward_hook(hook) for m in leaves]
    dtype = next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)
    try:
        with torch.no_grad():
            out = model(torch.zeros([1] + list(input_shape), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    inner = sizes[:-1] if sizes else []
    return list(out.shape[1:]), max(inner, default=0), scratch


def _kernel_metadata(model: nn.Sequential, input_shape: Sequence[int], kernel_id: str, blueprint_id: str,
                     name: str, device_requirements: Sequence[str],
                     memory_footprint_mb: Optional[float]) -> Dict[str, Any]:
    output_shape, max_act, scratch = _activation_estimate(model, input_shape)
    params = sum(p.numel() for p in model.parameters())
    if memory_footprint_mb is None:
        # MiB for one sample, as the host estimates it: the float32 weights
        # and buffers, input and output, two activation buffers and the
        # convolution scratch; rounded up to 4 decimals.
        weights = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
        floats = weights + math.prod(input_shape) + math.prod(output_shape) + 2 * max_act + scratch
        memory_footprint_mb = math.ceil(floats * 4 / 2**20 * 1e4) / 1e4
    # Key order and fields as in the reference kernels' embedded metadata.
    return {
        "kernel_id": kernel_id,
        "blueprint_id": blueprint_id,
        "name": name,
        "input_shape": [int(d) for d in input_shape],
        "output_shape": output_shape,
        "parameter_count": int(params),
        "device_requirements": list(device_requirements),
        "memory_footprint_mb": float(memory_footprint_mb),
        "compilation_target": COMPILATION_TARGET,
    }


def export_bytes(model: nn.Sequential, input_shape: Sequence[int], *, kernel_id: Optional[str] = None,
                 blueprint_id: Optional[str] = None, name: Optional[str] = None, dtype: str = "F32",
                 device_requirements: Sequence[str] = ("cpu",),
                 memory_footprint_mb: Optional[float] = None) -> Tuple[bytes, Dict[str, Any]]:
    """Return (file bytes, embedded KernelMetadata) for model.

    input_shape is one sample's shape, without the batch dimension.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not input_shape or any(not isinstance(d, int) or d < 1 for d in input_shape):
        raise ValueError(f"input_shape {list(input_shape)!r} must be a non-empty list of positive ints")
    graph = module_graph(model)
    was_training = model.training
    model.eval()
    try:
        positional = _positional(model)
        kernel_id = kernel_id or str(uuid.uuid4())
        meta = _kernel_metadata(positional, input_shape, kernel_id, blueprint_id or f"bp-{kernel_id}",
                                name or kernel_id, device_requirements, memory_footprint_mb)
        tensors = _tensors(positional, dtype)
    finally:
        model.train(was_training)
    data = write_safetensors(tensors, {
        "format": FORMAT,
        "esper.module": json.dumps(graph),
        "esper.kernel_metadata": json.dumps(meta),
    })
    return data, meta


def export(model: nn.Sequential, path: str, input_shape: Sequence[int], **kwargs: Any) -> Dict[str, Any]:
    """Write model as an esper-kernel/v1 file at path and return its
    KernelMetadata (as embedded, plus the file's sha256 under "checksum")."""
    data, meta = export_bytes(model, input_shape, **kwargs)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return dict(meta, checksum=hashlib.sha256(data).hexdigest())


def compiled_kernel(meta: Dict[str, Any], checksum: str, binary_ref: str) -> Dict[str, Any]:
    """A CompiledKernel document (Esper's contract) pointing at the file: the
    full KernelMetadata with its checksum, which the file cannot hold itself."""
    now = _now()
    full = {k: v for k, v in meta.items() if k != "checksum"}
    full.update({
        "optimization_flags": {},
        "performance_profile": {},
        "compatibility_version": "1.0",
        "created_at": now,
        "checksum": checksum,
    })
    return {
        "kernel_id": meta["kernel_id"],
        "blueprint_id": meta["blueprint_id"],
        "binary_ref": binary_ref,
        "metadata": full,
        "status": "compiled",
        "validation_results": {},
        "deployment_stats": {},
        "created_at": now,
        "last_used_at": None,
    }


def _reference_output(model: nn.Sequential, dtype: str, x: torch.Tensor) -> torch.Tensor:
    """The model's output in float64 from exactly the stored weights."""
    ref = copy.deepcopy(model).eval()
    torch_dtype, _ = DTYPES[dtype]
    with torch.no_grad():
        for t in list(ref.parameters()) + list(ref.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch_dtype))
        ref = ref.double()
        return ref(x.double())


def _stored_float32_output(model: nn.Sequential, dtype: str, x: torch.Tensor) -> torch.Tensor:
    """PyTorch's float32 output from exactly the stored weights."""
    ref = copy.deepcopy(model).eval().float()
    torch_dtype, _ = DTYPES[dtype]
    with torch.no_grad():
        for t in list(ref.parameters()) + list(ref.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch_dtype))
        return ref(x.float())


def write_case(directory: str, model: nn.Sequential, input_shape: Sequence[int], *, batch: int = 4,
               seed: int = 0, tolerance: float = 1e-5, dtype: str = "F32", kernel_id: Optional[str] = None,
               binary_ref: Optional[str] = None) -> Dict[str, Any]:
    """Export model into directory in the golden-case layout the host's tests
    read: kernel.safetensors, io.safetensors (input F32, expected F64, and
    torch_f32, PyTorch's own float32 output), case.json, and the
    CompiledKernel sidecar compiled_kernel.json."""
    os.makedirs(directory, exist_ok=True)
    kernel_id = kernel_id or os.path.basename(os.path.normpath(directory))
    kpath = os.path.join(directory, "kernel.safetensors")
    meta = export(model, kpath, input_shape, kernel_id=kernel_id, dtype=dtype)
    write_reference(directory, model, input_shape, meta, batch=batch, seed=seed, tolerance=tolerance,
                    dtype=dtype, binary_ref=binary_ref)
    return meta


def write_reference(directory: str, model: nn.Sequential, input_shape: Sequence[int], meta: Dict[str, Any], *,
                    batch: int = 4, seed: int = 0, tolerance: float = 1e-5, dtype: str = "F32",
                    binary_ref: Optional[str] = None) -> None:
    """Write the rest of a golden case next to directory/kernel.safetensors,
    a kernel made from model by whatever means (meta is what made it
    returned): io.safetensors with model's outputs, case.json and
    compiled_kernel.json. The converter's tests use it to check a converted
    file against the model it was saved from."""
    kpath = os.path.join(directory, "kernel.safetensors")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn([batch] + list(input_shape), generator=gen, dtype=torch.float32)
    expected = _reference_output(model, dtype, x)
    f32 = _stored_float32_output(model, dtype, x)
    rel = float((f32.double() - expected).norm() / expected.norm().clamp_min(1e-300))
    io = write_safetensors([
        ("input", "F32", list(x.shape), x.numpy().tobytes()),
        ("expected", "F64", list(expected.shape), expected.numpy().tobytes()),
        ("torch_f32", "F32", list(f32.shape), f32.numpy().tobytes()),
    ])
    with open(os.path.join(directory, "io.safetensors"), "wb") as f:
        f.write(io)
    case = {
        "kernel_id": meta["kernel_id"],
        "input_shape": list(x.shape),
        "output_shape": list(expected.shape),
        "tolerance": tolerance,
        "torch_float32_rel_error": rel,
        "module": module_graph(model),
    }
    with open(os.path.join(directory, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    doc = compiled_kernel(meta, meta["checksum"], binary_ref or "file://" + os.path.abspath(kpath))
    with open(os.path.join(directory, "compiled_kernel.json"), "w") as f:
        json.dump(doc, f, indent=1)


def selftest_models() -> Iterable[Tuple[str, nn.Sequential, List[int], str]]:
    """Sequentials covering every operation, with trained-looking batch-norm
    statistics: (name, model, input_shape, dtype)."""
    torch.manual_seed(1234)

    def stats(model: nn.Module) -> nn.Module:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    if m.affine:
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.uniform_(-0.2, 0.2)
        return model

    yield "seed-linear-relu", nn.Sequential(nn.Linear(64, 64), nn.ReLU()), [64], "F32"
    yield "mlp-bn-gelu", stats(nn.Sequential(
        nn.Linear(32, 48), nn.BatchNorm1d(48), nn.GELU(), nn.Dropout(0.3),
        nn.Linear(48, 16, bias=False), nn.Tanh(), nn.Linear(16, 4), nn.Sigmoid())), [32], "F32"
    yield "seq-layernorm-gelu-tanh", nn.Sequential(
        nn.Linear(12, 24), nn.LayerNorm(24), nn.GELU(approximate="tanh"), nn.Identity(),
        nn.Linear(24, 8), nn.LayerNorm([8], elementwise_affine=False)), [5, 12], "F32"
    yield "convnet-pool", stats(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, (3, 1), stride=2, padding=(1, 0), dilation=(2, 1), groups=2),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(32, 10))), [3, 11, 9], "F32"
    yield "nested-sequential", stats(nn.Sequential(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32)), nn.Tanh()),
        nn.Linear(32, 6))), [16], "F32"
    yield "conv-flatten-spatial", nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same"), nn.Flatten(start_dim=2), nn.Linear(36, 5)), [2, 6, 6], "F32"
    yield "half-weights", nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3)), [20], "F16"
    yield "bfloat16-weights", nn.Sequential(nn.Linear(20, 7), nn.Sigmoid()), [20], "BF16"


def selftest(out_dir: str) -> List[str]:
    """Write one case per selftest model under out_dir; check each file reads
    back to the same tensors and metadata. Returns the case names."""
    names = []
    for name, model, shape, dtype in selftest_models():
        d = os.path.join(out_dir, name)
        meta = write_case(d, model, shape, dtype=dtype)
        with open(os.path.join(d, "kernel.safetensors"), "rb") as f:
            data = f.read()
        fmeta, tensors = read_safetensors(data)
        assert fmeta["format"] == FORMAT, fmeta
        assert json.loads(fmeta["esper.module"]) == module_graph(model)
        embedded = json.loads(fmeta["esper.kernel_metadata"])
        assert embedded["parameter_count"] == sum(p.numel() for p in model.parameters())
        assert hashlib.sha256(data).hexdigest() == meta["checksum"]
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                want = v.to(DTYPES[dtype][0]).double()
                assert torch.equal(tensors[k], want), k
        names.append(name)
    return names


def _load_factory(spec: str) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--model {spec!r}: want module.path:callable_or_attribute")
    obj = getattr(importlib.import_module(mod_name), attr)
    return obj() if callable(obj) and not isinstance(obj, nn.Module) else obj


def _shape(s: str) -> List[int]:
    try:
        dims = [int(x) for x in s.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a shape like 3,32,32")
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{s!r} is not a shape of positive dimensions")
    return dims


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="esper_export.py",
        description="Export a torch.nn.Sequential as an esper-kernel/v1 file for the Kasmina host.")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("export", help="export a model", description=(
        "Export a Sequential built by a Python callable (module.path:function, imported from the "
        "current directory or PYTHONPATH), optionally loading a state_dict saved with torch.save "
        "(read with weights_only=True: no code runs from the file)."))
    e.add_argument("--model", required=True, help="module.path:callable returning an nn.Sequential (or the Sequential itself)")
    e.add_argument("--state-dict", help="a torch.save()d state_dict to load into the model")
    e.add_argument("--input-shape", required=True, type=_shape, help="one sample's shape without batch, e.g. 64 or 3,32,32")
    e.add_argument("--out", required=True, help="the kernel file to write (.safetensors)")
    e.add_argument("--kernel-id", help="KernelMetadata.kernel_id (default: a new UUID)")
    e.add_argument("--blueprint-id", help="KernelMetadata.blueprint_id (default: bp-<kernel id>)")
    e.add_argument("--name", help="KernelMetadata.name (default: the kernel id)")
    e.add_argument("--dtype", default="F32", choices=sorted(DTYPES), help="stored weight type (default F32)")
    e.add_argument("--device", action="append", dest="devices", help="device_requirements entry (repeatable; default cpu)")
    e.add_argument("--memory-footprint-mb", type=float, help="override the estimated footprint")
    e.add_argument("--compiled-kernel", metavar="JSON", help="also write a CompiledKernel document with the file's sha256")
    e.add_argument("--binary-ref", help="binary_ref for --compiled-kernel (e.g. s3://esper-artifacts/kernels/<id>/kernel.safetensors; default file://<out>)")

    s = sub.add_parser("selftest", help="export the built-in test models as golden-layout cases")
    s.add_argument("--out", required=True, help="directory to write one case folder per model into")

    i = sub.add_parser("inspect", help="print a kernel file's metadata and sha256")
    i.add_argument("file")

    args = p.parse_args(argv)
    if args.cmd == "export":
        model = _load_factory(args.model)
        if args.state_dict:
            model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
        try:
            meta = export(model, args.out, args.input_shape, kernel_id=args.kernel_id,
                          blueprint_id=args.blueprint_id, name=args.name, dtype=args.dtype,
                          device_requirements=args.devices or ["cpu"],
                          memory_footprint_mb=args.memory_footprint_mb)
        except UnsupportedModuleError as err:
            print(f"esper_export: {err}", file=sys.stderr)
            return 2
        if args.compiled_kernel:
            doc = compiled_kernel(meta, meta["checksum"], args.binary_ref or "file://" + os.path.abspath(args.out))
            with open(args.compiled_kernel, "w") as f:
                json.dump(doc, f, indent=1)
        print(json.dumps(meta))
        return 0
    if args.cmd == "selftest":
        names = selftest(args.out)
        print(json.dumps({"cases": names}))
        return 0
    with open(args.file, "rb") as f:
        data = f.read()
    meta, tensors = read_safetensors(data)
    print(json.dumps({
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": {k: (json.loads(v) if k.startswith("esper.") else v) for k, v in meta.items()},
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
