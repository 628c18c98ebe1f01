#!/usr/bin/env python3
"""Convert the PyTorch files Esper's compiler writes into esper-kernel/v1 files.

The Kasmina host refuses torch.save files and TorchScript archives: it never
unpickles anything and never runs model code. Esper's compiler (Tezzeret)
writes exactly such files, so this converter runs on the trusted compile
side, where PyTorch is, and turns them into the portable format the host
executes:

    import esper_convert
    meta = esper_convert.convert("compiled.pt", "kernel.safetensors", input_shape=[64])
    data, meta = esper_convert.convert_bytes(compiled_binary)   # bytes in, bytes out

or, from the command line,

    python3 esper_convert.py --input compiled.pt --output kernel.safetensors --input-shape 64

It reads

- a torch.save'd module (zip, PyTorch's default, or the legacy
  ``_use_new_zipfile_serialization=False`` format), loaded with
  ``torch.load(map_location="cpu")``;
- Tezzeret's dict, ``{"module": torch.compile(module), "state_dict": ...,
  "ir_metadata": blueprint_ir}``: the module is unwrapped from torch.compile's
  OptimizedModule (``_orig_mod``), its weights are filled from ``state_dict``
  (keys with or without the ``_orig_mod.`` prefix), and ``ir_metadata``
  supplies ``kernel_id``, ``blueprint_id``, ``name`` and the input shape
  (``input_shape``, or ``input_size`` for one feature dimension) when present.
  A file written by torch 2.x loads here even where this torch has no
  torch.compile: the compiler's own objects pickled with the wrapper are
  replaced by inert stand-ins and dropped;
- a TorchScript file (``torch.jit.script(...)`` or ``torch.jit.trace(...)``,
  then ``.save``), loaded with ``torch.jit.load``. Its forward graph must be a
  plain chain of its children (a scripted Sequential's is); each child is
  rebuilt as the torch.nn module its TorchScript type names, from its
  attributes (scripted) or its traced graph's constants (traced), and its
  parameters and buffers. The rebuilt Sequential must reproduce the
  TorchScript module's output before anything is written.

The module found is exported with esper_export (same operations, same
refusals): an operation the executor lacks is refused by name and position,
``unsupported module 'LSTM' at '3'``.

Loading a torch.save file runs the pickle's code: convert only files your own
compiler wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.abc
import importlib.util
import inspect
import io
import json
import os
import struct
import sys
import types
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

import esper_export as ee  # next to this file: the script's folder is on sys.path

UnsupportedModuleError = ee.UnsupportedModuleError

# The source formats convert recognises.
TORCH_SAVE_ZIP = "torch.save zip"
TORCH_SAVE_LEGACY = "torch.save legacy"
TORCHSCRIPT = "TorchScript"

# torch.save's legacy format begins with pickle protocol 2 (0x80 0x02) and
# torch's magic number as a 10-byte LONG1.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# The relative L2 error within which a rebuilt Sequential must reproduce
# the TorchScript module it was read from (same operations, same weights:
# measured 0 to a few 1e-8).
_VERIFY_TOLERANCE = 1e-5

__all__ = [
    "ConversionError",
    "NotSequentialError",
    "UnsupportedModuleError",
    "Artifact",
    "load_artifact",
    "convert",
    "convert_bytes",
    "sniff",
    "main",
]


class ConversionError(ValueError):
    """A file convert cannot turn into a kernel, for a reason other than an
    unsupported operation (which raises UnsupportedModuleError)."""


class NotSequentialError(ConversionError):
    """A TorchScript module whose forward is not a plain chain of its
    children."""


@dataclasses.dataclass
class Artifact:
    """What load_artifact found in a file.

    model is an nn.Sequential of esper_export's operations, in eval mode.
    reference, for a TorchScript file, is the loaded ScriptModule that model
    must reproduce. ir_metadata is Tezzeret's blueprint IR when the file
    carried one. compiled says the module was wrapped by torch.compile.
    """

    format: str
    model: nn.Sequential
    ir_metadata: Optional[Dict[str, Any]] = None
    reference: Optional[nn.Module] = None
    compiled: bool = False


# ---------------------------------------------------------------------------
# Telling the formats apart.


def sniff(data: bytes, label: str = "the file") -> str:
    """Return the format of a file's bytes, or raise ConversionError saying
    what they are instead; label names the file in messages."""
    head = data[:16]
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = z.namelist()
        except zipfile.BadZipFile as err:
            raise ConversionError(f"{label}: a damaged zip archive ({err})") from None
        rests = [n.split("/", 1)[1] for n in names if "/" in n]
        if any(r == "constants.pkl" or r.startswith("code/") for r in rests):
            return TORCHSCRIPT
        if "data.pkl" in rests:
            return TORCH_SAVE_ZIP
        raise ConversionError(f"{label}: a zip archive, but neither a torch.save archive (no data.pkl) "
                              "nor a TorchScript archive (no code/)")
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_SAVE_LEGACY
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n < len(data):
            raise ConversionError(f"{label}: already a safetensors file; esper-kernel/v1 files need no conversion")
    raise ConversionError(f"{label}: not a PyTorch file (it starts with {head[:8]!r}, neither a zip archive "
                          "nor torch.save's legacy magic number)")


# ---------------------------------------------------------------------------
# torch.save files.

# Modules whose classes torch.compile's result pickles along with the
# module (the compile context, its backend and hooks). Where this torch
# lacks them they load as inert stand-ins; only _orig_mod is kept.
_COMPILE_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch._guards",
                    "torch._C._dynamo", "torch.compiler")


def _is_compile_internal(module: str, name: str) -> bool:
    return (any(module == m or module.startswith(m + ".") for m in _COMPILE_MODULES)
            or (module == "torch" and name.startswith("_TorchCompile")))


class _OptimizedModule(nn.Module):
    """torch.compile's wrapper, torch._dynamo.eval_frame.OptimizedModule, as
    loaded where this torch has none: like the real one it holds the
    compiled module as its submodule _orig_mod (so its state_dict keys start
    with "_orig_mod."). Built by 2.x's __reduce__, (module, compile
    context), or by plain attribute state."""

    def __init__(self, mod: Optional[nn.Module] = None, dynamo_ctx: Any = None):
        super().__init__()
        if mod is not None:
            self._orig_mod = mod

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._orig_mod(*args, **kwargs)


class _CompileInternal:
    """Stands in for a torch.compile object (compile context, backend,
    hooks) this torch cannot import. It takes any arguments and state and
    is never used."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_stand_ins: Dict[Tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    if name == "OptimizedModule":
        return _OptimizedModule
    key = (module, name)
    if key not in _stand_ins:
        _stand_ins[key] = type(name, (_CompileInternal,), {"__module__": __name__, "_stands_for": f"{module}.{name}"})
    return _stand_ins[key]


class _StandInModule(types.ModuleType):
    """A torch.compile module this torch lacks: every name in it is a
    stand-in."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(self.__name__, name)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds torch.compile's modules after every real finder has failed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not _is_compile_internal(fullname, ""):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        m = _StandInModule(spec.name)
        m.__path__ = []  # a package, so that its submodules import too
        return m

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _torch_getattr(name: str) -> Any:
    if name.startswith("_TorchCompile"):
        return _stand_in("torch", name)
    raise AttributeError(f"module 'torch' has no attribute {name!r}")


@contextlib.contextmanager
def _compile_stand_ins() -> Iterator[None]:
    """While open, torch.compile's classes that this torch lacks import as
    stand-ins (the real ones, where present, are found first). Everything
    is undone on exit: the finder, the stand-in modules and the names they
    were bound to. (torch.load's pickle_module argument cannot do this:
    torch 1.13 replaces it with pickle unless weights_only is set.)"""
    finder = _StandInFinder()
    sys.meta_path.append(finder)
    patched_torch = "__getattr__" not in vars(torch)
    if patched_torch:
        torch.__getattr__ = _torch_getattr  # type: ignore[attr-defined]
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if patched_torch:
            del torch.__getattr__  # type: ignore[attr-defined]
        for name, mod in list(sys.modules.items()):
            if isinstance(mod, _StandInModule):
                del sys.modules[name]
                parent, _, child = name.rpartition(".")
                if getattr(sys.modules.get(parent), child, None) is mod:
                    delattr(sys.modules[parent], child)


def _torch_load(data: bytes, label: str) -> Any:
    kwargs: Dict[str, Any] = {"map_location": "cpu"}
    if "weights_only" in inspect.signature(torch.load).parameters:
        kwargs["weights_only"] = False  # a whole module: torch 2.6+ would refuse it by default
    with warnings.catch_warnings(), _compile_stand_ins():
        # The legacy format compares each class's source with the saver's;
        # convert rebuilds modules from their types, so a change is moot.
        warnings.simplefilter("ignore", getattr(torch.serialization, "SourceChangeWarning", Warning))
        try:
            return torch.load(io.BytesIO(data), **kwargs)
        except Exception as err:  # noqa: BLE001  (anything unpickling raises)
            raise ConversionError(f"{label}: torch.load failed: {type(err).__name__}: {err} (a torch.save'd module "
                                  "loads only where its classes are importable)") from err


def _is_optimized(m: Any) -> bool:
    if not isinstance(m, nn.Module) or "_orig_mod" not in m._modules:
        return False
    cls = type(m)
    return cls is _OptimizedModule or (cls.__name__ == "OptimizedModule" and cls.__module__.startswith("torch._dynamo"))


def _unwrap(m: nn.Module) -> Tuple[nn.Module, bool]:
    compiled = False
    while _is_optimized(m):
        m = m._modules["_orig_mod"]
        compiled = True
    return m, compiled


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _apply_state_dict(model: nn.Module, sd: Any) -> None:
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"'state_dict' is a {type(sd).__name__}, not a mapping of names to tensors")
    prefix = "_orig_mod."
    stripped: Dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        name = key
        while name.startswith(prefix):
            name = name[len(prefix):]
        if name in stripped:
            raise ConversionError(f"'state_dict' holds {name!r} twice (as {key!r} too)")
        stripped[name] = t
    try:
        model.load_state_dict(stripped, strict=True)
    except RuntimeError as err:
        raise ConversionError(f"'state_dict' does not fit the module: {err}") from None


def _from_torch_save(data: bytes, label: str, fmt: str) -> Artifact:
    obj = _torch_load(data, label)
    ir = sd = None
    tezzeret = isinstance(obj, Mapping) and "module" in obj
    if tezzeret:
        ir, sd, obj = obj.get("ir_metadata"), obj.get("state_dict"), obj["module"]
        if ir is not None and not isinstance(ir, Mapping):
            raise ConversionError(f"'ir_metadata' is a {type(ir).__name__}, not a dict")
    elif _is_tensor_dict(obj):
        raise ConversionError(f"{label} holds a state_dict only, which has no module structure; export it with "
                              "esper_export.py export --model module:factory --state-dict FILE")
    if not isinstance(obj, nn.Module):
        what = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        where = "'module' is" if tezzeret else f"{label} holds"
        raise ConversionError(f"{where} {what}, not a torch.nn.Module")
    model, compiled = _unwrap(obj)
    ee.module_graph(model)  # refuses an unsupported module by name, before anything else
    if sd is not None:
        _apply_state_dict(model, sd)
    return Artifact(fmt, model.eval(), dict(ir) if ir is not None else None, compiled=compiled)


# ---------------------------------------------------------------------------
# TorchScript files.

# The types a TorchScript child may have, by name: esper_export's exact ones.
_SUPPORTED = {cls.__name__: cls for cls in ee._CONVERTERS}


def _script_type(m: torch.jit.ScriptModule) -> Tuple[str, bool]:
    """The module's original class name, and whether its TorchScript type is
    that class of torch.nn itself (not a user class of the same name)."""
    name = m.original_name
    parts = [p for p in m._c._type().qualified_name().split(".") if not p.startswith("___torch_mangle_")]
    cls = getattr(nn, name, None)
    is_nn = isinstance(cls, type) and ".".join(parts) == f"__torch__.{cls.__module__}.{cls.__name__}"
    return name, is_nn


def _describe(node: Any) -> str:
    kind = node.kind()
    if kind in ("prim::CallMethod", "prim::GetAttr") and node.hasAttribute("name"):
        return f"{kind}[{node.s('name')}]"
    return kind


def _chain(m: torch.jit.ScriptModule, name: str, path: str) -> List[str]:
    """The children m's forward calls, in order, when that forward is a
    plain chain: x -> child_a(x) -> child_b(...) -> return. Anything else in
    the graph (an operation, a second argument, a child called twice, a
    child never called) raises NotSequentialError."""
    where = f"{name!r} at {path or '<root>'!r}"
    children = dict(m.named_children())
    g = m.graph
    args = list(g.inputs())
    if len(args) != 2:
        raise NotSequentialError(f"the forward of {where} takes {len(args) - 1} arguments; "
                                 "a sequential chain takes one tensor")
    self_id, cur = args[0].unique(), args[1].unique()
    getattrs: Dict[int, str] = {}
    order: List[str] = []
    for node in g.nodes():
        kind = node.kind()
        if kind == "prim::Constant":  # only an operation below could use it, and that is refused
            continue
        if (kind == "prim::GetAttr" and node.inputsAt(0).unique() == self_id
                and node.s("name") in children):
            getattrs[node.output().unique()] = node.s("name")
            continue
        if kind == "prim::CallMethod" and node.s("name") == "forward":
            callee = node.inputsAt(0).unique()
            if callee in getattrs and node.inputsSize() == 2 and node.inputsAt(1).unique() == cur:
                order.append(getattrs[callee])
                cur = node.output().unique()
                continue
            if callee in getattrs and node.inputsSize() == 1 and not node.output().uses():
                # A traced child that returns its input (Identity) is
                # recorded as a call without arguments whose result is
                # unused; the chain's value passes through it unchanged.
                order.append(getattrs[callee])
                continue
        raise NotSequentialError(f"the forward of {where} is not a plain sequential chain: it runs "
                                 f"{_describe(node)}")
    rets = list(g.return_node().inputs())
    if len(rets) != 1 or rets[0].unique() != cur:
        raise NotSequentialError(f"the forward of {where} is not a plain sequential chain: "
                                 "it does not return its last child's output")
    for child in order:
        if order.count(child) > 1:
            raise NotSequentialError(f"the forward of {where} calls child {child!r} more than once")
    unused = [c for c in children if c not in order]
    if unused:
        raise NotSequentialError(f"the forward of {where} never calls child {unused[0]!r}")
    return order


_NOT_CONSTANT = object()


def _constant(v: Any) -> Any:
    node = v.node()
    if node.kind() == "prim::Constant":
        return v.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_constant(i) for i in node.inputs()]
    return _NOT_CONSTANT


def _counts_batches(node: Any) -> bool:
    """A batch norm traced in training mode also counts batches in a
    buffer; that bookkeeping is not the operation (whose training flag
    then refuses it)."""
    if node.kind() != "aten::add_":
        return False
    src = node.inputsAt(0).node()
    return src.kind() == "prim::GetAttr" and src.s("name") == "num_batches_tracked"


class _Leaf:
    """One TorchScript child of a type esper_export supports: its
    attributes (a scripted module keeps them), else the constant arguments
    of the one operation its traced graph runs."""

    _PLUMBING = ("prim::Constant", "prim::GetAttr", "prim::ListConstruct")

    def __init__(self, m: torch.jit.ScriptModule, name: str, path: str):
        self.m, self.name, self.path = m, name, path
        self.params = {k: v.detach() for k, v in m.named_parameters(recurse=False)}
        self.buffers = {k: v.detach() for k, v in m.named_buffers(recurse=False)}

    def refuse(self, detail: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(self.name, self.path, detail)

    def values(self, attrs: Sequence[str], kinds: Sequence[str], index: Callable[[str, List[Any]], Dict[str, Any]]
               ) -> Dict[str, Any]:
        """attrs from the scripted module, or index(kind, arguments) of the
        traced graph's single operation, which must be one of kinds."""
        found = {}
        for a in attrs:
            try:
                found[a] = getattr(self.m, a)
            except AttributeError:
                pass
        if len(found) == len(attrs):
            return found
        if found:
            raise self.refuse(f"has {sorted(found)} but not {sorted(set(attrs) - set(found))}")
        ops = [n for n in self.m.graph.nodes() if n.kind() not in self._PLUMBING and not _counts_batches(n)]
        if len(ops) != 1 or ops[0].kind() not in kinds:
            ran = ", ".join(n.kind() for n in ops) or "nothing"
            raise self.refuse(f"its traced forward runs {ran}, not one of {', '.join(kinds)}")
        op = ops[0]
        out = index(op.kind(), [_constant(i) for i in op.inputs()])
        for k, v in out.items():
            if v is _NOT_CONSTANT:
                raise self.refuse(f"its traced {op.kind()} takes {k} from a tensor, not a constant")
        return out

    def tensor(self, name: str, dims: int) -> torch.Tensor:
        t = self.params.get(name)
        if t is None or t.dim() != dims:
            raise self.refuse(f"has no {dims}-D parameter {name!r}")
        return t


def _train_flag_off(leaf: _Leaf, flag: Any) -> None:
    if flag is True:
        raise leaf.refuse("traced in training mode (its graph runs the training computation); "
                          "trace the module after calling eval()")


def _build_linear(l: _Leaf) -> nn.Module:
    w = l.tensor("weight", 2)
    return nn.Linear(w.shape[1], w.shape[0], bias="bias" in l.params)


def _build_conv2d(l: _Leaf) -> nn.Module:
    w = l.tensor("weight", 4)

    def index(kind: str, a: List[Any]) -> Dict[str, Any]:
        if kind == "aten::_convolution":
            if a[6] is not False:
                raise l.refuse("its traced graph runs a transposed convolution")
            return {"stride": a[3], "padding": a[4], "dilation": a[5], "groups": a[8], "padding_mode": "zeros"}
        return {"stride": a[3], "padding": a[4], "dilation": a[5], "groups": a[6], "padding_mode": "zeros"}

    v = l.values(("stride", "padding", "dilation", "groups", "padding_mode"),
                 ("aten::_convolution", "aten::_convolution_mode", "aten::conv2d"), index)
    groups = v["groups"]
    pad = v["padding"] if isinstance(v["padding"], str) else tuple(v["padding"])
    return nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(v["stride"]), padding=pad,
                     dilation=tuple(v["dilation"]), groups=groups, bias="bias" in l.params,
                     padding_mode=v["padding_mode"])


def _build_batchnorm(cls: type) -> Callable[[_Leaf], nn.Module]:
    def build(l: _Leaf) -> nn.Module:
        def index(kind: str, a: List[Any]) -> Dict[str, Any]:
            _train_flag_off(l, a[5])
            return {"eps": a[7]}

        v = l.values(("eps",), ("aten::batch_norm",), index)
        ref = l.buffers.get("running_mean", l.params.get("weight"))
        if ref is None:
            # Neither statistics nor affine weights: the size is only an attribute.
            num = getattr(l.m, "num_features", None)
            if num is None:
                raise l.refuse("track_running_stats=False")
        else:
            num = ref.numel()
        return cls(num, eps=v["eps"], affine="weight" in l.params, track_running_stats="running_mean" in l.buffers)
    return build


def _build_layernorm(l: _Leaf) -> nn.Module:
    v = l.values(("normalized_shape", "eps"), ("aten::layer_norm",),
                 lambda kind, a: {"normalized_shape": a[1], "eps": a[4]})
    return nn.LayerNorm(list(v["normalized_shape"]), eps=v["eps"], elementwise_affine="weight" in l.params)


def _build_gelu(l: _Leaf) -> nn.Module:
    v = l.values(("approximate",), ("aten::gelu",),
                 lambda kind, a: {"approximate": a[1] if len(a) > 1 else "none"})
    return nn.GELU(approximate=v["approximate"])


def _build_dropout(l: _Leaf) -> nn.Module:
    def index(kind: str, a: List[Any]) -> Dict[str, Any]:
        _train_flag_off(l, a[2])
        return {"p": a[1]}

    return nn.Dropout(l.values(("p",), ("aten::dropout", "aten::dropout_"), index)["p"])


def _build_flatten(l: _Leaf) -> nn.Module:
    v = l.values(("start_dim", "end_dim"), ("aten::flatten",), lambda kind, a: {"start_dim": a[1], "end_dim": a[2]})
    return nn.Flatten(v["start_dim"], v["end_dim"])


def _build_pool(l: _Leaf) -> nn.Module:
    v = l.values(("output_size",), ("aten::adaptive_avg_pool2d",), lambda kind, a: {"output_size": a[1]})
    size = v["output_size"]
    return nn.AdaptiveAvgPool2d(size if isinstance(size, int) else tuple(size))


_BUILDERS: Dict[str, Callable[[_Leaf], nn.Module]] = {
    "Linear": _build_linear,
    "Conv2d": _build_conv2d,
    "BatchNorm1d": _build_batchnorm(nn.BatchNorm1d),
    "BatchNorm2d": _build_batchnorm(nn.BatchNorm2d),
    "LayerNorm": _build_layernorm,
    "ReLU": lambda l: nn.ReLU(),
    "Tanh": lambda l: nn.Tanh(),
    "Sigmoid": lambda l: nn.Sigmoid(),
    "GELU": _build_gelu,
    "Identity": lambda l: nn.Identity(),
    "Dropout": _build_dropout,
    "Flatten": _build_flatten,
    "AdaptiveAvgPool2d": _build_pool,
}
assert set(_BUILDERS) == set(_SUPPORTED), "every operation esper_export supports needs a TorchScript builder"


def _copy_tensors(l: _Leaf, mod: nn.Module) -> None:
    """Give mod the leaf's parameters and buffers, which must be exactly
    the ones torch.nn's module of that type has, with the same shapes."""
    for kind, have, want in (("parameters", l.params, dict(mod.named_parameters(recurse=False))),
                             ("buffers", l.buffers, dict(mod.named_buffers(recurse=False)))):
        if set(have) != set(want):
            raise l.refuse(f"holds {kind} {sorted(have)}, torch.nn.{l.name} here would hold {sorted(want)}")
        for key, t in have.items():
            if t.shape != want[key].shape:
                raise l.refuse(f"{key} has shape {list(t.shape)}, torch.nn.{l.name} here {list(want[key].shape)}")
            if kind == "parameters":
                mod._parameters[key] = nn.Parameter(t.clone(), requires_grad=want[key].requires_grad)
            else:
                mod._buffers[key] = t.clone()


def _leaf_name(m: torch.jit.ScriptModule, path: str) -> str:
    """The leaf's type name, when it is torch.nn's own module of a type the
    executor supports; otherwise it is refused by name and position."""
    name, is_nn = _script_type(m)
    if name not in _SUPPORTED:
        raise UnsupportedModuleError(name, path)
    if not is_nn:
        raise UnsupportedModuleError(name, path, f"its TorchScript type {m._c._type().qualified_name()} "
                                                 f"is not torch.nn.{name}")
    return name


def _rebuild_leaf(m: torch.jit.ScriptModule, path: str) -> nn.Module:
    name = _leaf_name(m, path)
    leaf = _Leaf(m, name, path)
    try:
        mod = _BUILDERS[name](leaf)
    except (TypeError, ValueError) as err:
        if isinstance(err, UnsupportedModuleError):
            raise
        raise leaf.refuse(str(err)) from None
    _copy_tensors(leaf, mod)
    ee._CONVERTERS[type(mod)](mod, path)  # what the format cannot express, named at its TorchScript position
    return mod


def _is_container(m: torch.jit.ScriptModule) -> bool:
    """torch.nn.Sequential, or a custom module with children (whose forward
    must then chain them); everything else is a leaf."""
    name, is_nn = _script_type(m)
    return (name == "Sequential" and is_nn) or (not is_nn and bool(dict(m.named_children())))


def _refuse_unsupported(m: torch.jit.ScriptModule, path: str) -> None:
    """Refuse, by name and position, the first leaf under m whose type the
    executor lacks, before any forward is examined."""
    for child, cm in m.named_children():
        cpath = f"{path}.{child}" if path else child
        if _is_container(cm):
            _refuse_unsupported(cm, cpath)
            continue
        _leaf_name(cm, cpath)


def _rebuild(m: torch.jit.ScriptModule, path: str = "") -> nn.Sequential:
    """An nn.Sequential equivalent to the TorchScript module m, whose
    forward must chain its children. Positions in refusals are m's
    attribute names ('3', '1.0')."""
    name, _ = _script_type(m)
    children = dict(m.named_children())
    layers = []
    for child in _chain(m, name, path):
        cpath = f"{path}.{child}" if path else child
        cm = children[child]
        if _is_container(cm):
            layers.append(_rebuild(cm, cpath))
        else:
            layers.append(_rebuild_leaf(cm, cpath))
    return nn.Sequential(*layers)


def _from_torchscript(data: bytes, label: str) -> Artifact:
    try:
        script = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as err:  # noqa: BLE001  (whatever TorchScript's loader raises)
        raise ConversionError(f"{label}: torch.jit.load failed: {type(err).__name__}: {err}") from err
    script.eval()
    if not _is_container(script):
        raise UnsupportedModuleError(script.original_name, "<root>", "the root must be a torch.nn.Sequential or a "
                                                                     "module whose forward chains its children")
    _refuse_unsupported(script, "")
    model = _rebuild(script)
    return Artifact(TORCHSCRIPT, model.eval(), reference=script)


# ---------------------------------------------------------------------------
# Putting it together.


def load_artifact(src: Any, label: Optional[str] = None) -> Artifact:
    """Load a PyTorch file (a path, or its bytes) and find the Sequential
    in it; label names it in messages (default: the path).

    Raises ConversionError (or its NotSequentialError) for a file that holds
    no convertible module, UnsupportedModuleError for an operation the
    executor lacks."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, label = bytes(src), label or "the file"
    else:
        with open(src, "rb") as f:
            data = f.read()
        label = label or str(src)
    fmt = sniff(data, label)
    if fmt == TORCHSCRIPT:
        return _from_torchscript(data, label)
    return _from_torch_save(data, label, fmt)


def _positive_shape(v: Any, what: str) -> List[int]:
    if isinstance(v, (list, tuple)) and v and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v):
        return [int(d) for d in v]
    raise ConversionError(f"{what} is {v!r}, not a non-empty list of positive ints")


def _ir_input_shape(ir: Dict[str, Any]) -> Optional[List[int]]:
    if "input_shape" in ir:
        return _positive_shape(ir["input_shape"], "ir_metadata.input_shape")
    if "input_size" in ir:
        return _positive_shape([ir["input_size"]], "ir_metadata.input_size")
    return None


def _first_linear_shape(model: nn.Sequential) -> Optional[List[int]]:
    """[in_features] when the first module that is not elementwise is a
    Linear; None when the input shape cannot be told from the module."""
    for m in model.modules():
        if type(m) in (nn.Sequential, nn.Identity, nn.Dropout, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU):
            continue
        return [m.in_features] if type(m) is nn.Linear else None
    return None


def _input_shape(given: Optional[Sequence[int]], art: Artifact) -> List[int]:
    declared = _ir_input_shape(art.ir_metadata) if art.ir_metadata else None
    if given is not None:
        shape = _positive_shape(list(given), "input_shape")
        if declared is not None and declared != shape:
            raise ConversionError(f"input_shape {shape} contradicts the file's ir_metadata, which declares {declared}")
        return shape
    if declared is not None:
        return declared
    inferred = _first_linear_shape(art.model)
    if inferred is None:
        raise ConversionError("the input shape is unknown: the file declares none (ir_metadata.input_shape or "
                              "input_size) and the module does not start with a Linear; pass input_shape "
                              "(--input-shape)")
    return inferred


def _run(model: nn.Module, x: torch.Tensor, shape: List[int], what: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001  (a shape mismatch raises RuntimeError, others other things)
        raise ConversionError(f"input shape {shape} does not fit {what}: {type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor):
        raise ConversionError(f"{what} returns a {type(out).__name__}, not a tensor")
    return out


def _check(art: Artifact, shape: List[int]) -> List[int]:
    """Run the rebuilt model (and the TorchScript module it must reproduce)
    on a sample batch; return the per-sample output shape."""
    dtype = next((t.dtype for t in art.model.state_dict().values() if t.is_floating_point()), torch.float32)
    x = torch.randn([2] + shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(dtype)
    got = _run(art.model, x, shape, "the module")
    if art.reference is not None:
        want = _run(art.reference, x, shape, "the TorchScript module")
        if got.shape != want.shape:
            raise ConversionError(f"the rebuilt Sequential's output has shape {list(got.shape)}, the TorchScript "
                                  f"module's {list(want.shape)}")
        err = float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))
        if not err <= _VERIFY_TOLERANCE:
            raise ConversionError(f"the rebuilt Sequential does not reproduce the TorchScript module: relative "
                                  f"error {err:.3g} (over {_VERIFY_TOLERANCE:g})")
    out = list(got.shape[1:])
    ir = art.ir_metadata or {}
    if "output_shape" in ir and _positive_shape(ir["output_shape"], "ir_metadata.output_shape") != out:
        raise ConversionError(f"the module's output shape is {out}, ir_metadata.output_shape says {ir['output_shape']}")
    if "output_size" in ir and _positive_shape([ir["output_size"]], "ir_metadata.output_size") != out[-1:]:
        raise ConversionError(f"the module's output shape is {out}, ir_metadata.output_size says {ir['output_size']}")
    return out


def _ir_string(ir: Optional[Dict[str, Any]], key: str) -> Optional[str]:
    if not ir or ir.get(key) is None:
        return None
    v = ir[key]
    if not isinstance(v, str) or not v:
        raise ConversionError(f"ir_metadata.{key} is {v!r}, not a non-empty string")
    return v


def convert_bytes(src: Any, input_shape: Optional[Sequence[int]] = None, *, kernel_id: Optional[str] = None,
                  blueprint_id: Optional[str] = None, name: Optional[str] = None, dtype: str = "F32",
                  device_requirements: Sequence[str] = ("cpu",), memory_footprint_mb: Optional[float] = None,
                  label: Optional[str] = None) -> Tuple[bytes, Dict[str, Any]]:
    """Convert a PyTorch file (a path, or its bytes: what Tezzeret's
    run_fast_compilation returns) and return (esper-kernel/v1 file bytes,
    embedded KernelMetadata), as esper_export.export_bytes does.

    input_shape is one sample's shape without the batch dimension; without
    it, the file's ir_metadata (input_shape or input_size) or a leading
    Linear's in_features tells it. kernel_id, blueprint_id and name default
    to ir_metadata's, then to esper_export's defaults."""
    art = load_artifact(src, label)
    shape = _input_shape(input_shape, art)
    _check(art, shape)
    ir = art.ir_metadata
    return ee.export_bytes(art.model, shape,
                           kernel_id=kernel_id or _ir_string(ir, "kernel_id"),
                           blueprint_id=blueprint_id or _ir_string(ir, "blueprint_id"),
                           name=name or _ir_string(ir, "name"), dtype=dtype,
                           device_requirements=device_requirements, memory_footprint_mb=memory_footprint_mb)


def convert(src: Any, dst: str, input_shape: Optional[Sequence[int]] = None, **kwargs: Any) -> Dict[str, Any]:
    """Convert the PyTorch file src (a path, or its bytes) into the
    esper-kernel/v1 file dst; the arguments are convert_bytes's. Returns
    the KernelMetadata as esper_export.export does (the embedded fields plus
    the file's sha256 under "checksum"). Nothing is written when conversion
    is refused."""
    data, meta = convert_bytes(src, input_shape, **kwargs)
    tmp = f"{dst}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)
    return dict(meta, checksum=hashlib.sha256(data).hexdigest())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="esper_convert.py",
        description="Convert a torch.save'd module (zip or legacy; Tezzeret's {module, state_dict, ir_metadata} "
                    "dict included) or a TorchScript file into an esper-kernel/v1 file for the Kasmina host. "
                    "Loading a torch.save file runs its pickle: convert only files your own compiler wrote.")
    p.add_argument("--input", required=True, help="the PyTorch file (.pt)")
    p.add_argument("--output", required=True, help="the kernel file to write (.safetensors)")
    p.add_argument("--input-shape", type=ee._shape,
                   help="one sample's shape without batch, e.g. 64 or 3,32,32 (default: the file's ir_metadata, "
                        "or a leading Linear's in_features)")
    p.add_argument("--kernel-id", help="KernelMetadata.kernel_id (default: ir_metadata's, else a new UUID)")
    p.add_argument("--blueprint-id", help="KernelMetadata.blueprint_id (default: ir_metadata's, else bp-<kernel id>)")
    p.add_argument("--name", help="KernelMetadata.name (default: ir_metadata's, else the kernel id)")
    p.add_argument("--dtype", default="F32", choices=sorted(ee.DTYPES), help="stored weight type (default F32)")
    p.add_argument("--device", action="append", dest="devices", help="device_requirements entry (repeatable; default cpu)")
    p.add_argument("--memory-footprint-mb", type=float, help="override the estimated footprint")
    p.add_argument("--compiled-kernel", metavar="JSON", help="also write a CompiledKernel document with the file's sha256")
    p.add_argument("--binary-ref", help="binary_ref for --compiled-kernel (default file://<output>)")
    args = p.parse_args(argv)
    try:
        meta = convert(args.input, args.output, args.input_shape, kernel_id=args.kernel_id,
                       blueprint_id=args.blueprint_id, name=args.name, dtype=args.dtype,
                       device_requirements=args.devices or ["cpu"], memory_footprint_mb=args.memory_footprint_mb)
    except (ConversionError, UnsupportedModuleError, OSError) as err:
        print(f"esper_convert: {err}", file=sys.stderr)
        return 2
    if args.compiled_kernel:
        doc = ee.compiled_kernel(meta, meta["checksum"], args.binary_ref or "file://" + os.path.abspath(args.output))
        with open(args.compiled_kernel, "w") as f:
            json.dump(doc, f, indent=1)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
