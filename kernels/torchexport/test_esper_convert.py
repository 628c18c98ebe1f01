"""Unit checks of esper_convert, and the writer of the converted golden cases
the Go test runs through the host.

Run: /usr/bin/python3 -m unittest -v test_esper_convert   (in this folder)
     /usr/bin/python3 test_esper_convert.py cases --out DIR   (the Go test does)

Every PyTorch file here is written by the installed PyTorch in the forms
Esper hands over: torch.save of the module (zip and legacy), Tezzeret's
{"module": torch.compile(module), "state_dict", "ir_metadata"} dict, and the
TorchScript twins (torch.jit.script and torch.jit.trace). Where this torch
has no torch.compile (Debian's 1.13), dynamo_emulation() writes what torch
2.x writes for a compiled module: the same pickled class references, built
the way 2.x's OptimizedModule.__reduce__ builds them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from torch import nn

import esper_convert as ec
import esper_export as ee

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# What torch.compile writes.


@contextlib.contextmanager
def dynamo_emulation() -> Iterator[Callable[[nn.Module], nn.Module]]:
    """Yield a torch.compile stand-in for a torch without one.

    Its result pickles as torch 2.x's does: a REDUCE of
    torch._dynamo.eval_frame.OptimizedModule(module, OptimizeContext(...)),
    the context a REDUCE with its callback (CatchErrorsWrapper around
    ConvertFrame around torch._TorchCompileInductorWrapper, with Hooks) and a
    state dict; its state_dict keys start with "_orig_mod.". The classes are
    registered under torch 2.x's module names only while the context is
    open, so a file loaded afterwards meets a torch that lacks them, as a
    torch 1.13 converter would."""
    names = ["torch._dynamo", "torch._dynamo.eval_frame", "torch._dynamo.convert_frame", "torch._dynamo.hooks"]
    if any(n in sys.modules for n in names) or hasattr(torch, "_TorchCompileInductorWrapper"):
        raise RuntimeError("torch already has torch._dynamo; use the real torch.compile")
    mods = {n: types.ModuleType(n) for n in names}

    def place(cls: type, module: str) -> type:
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
        setattr(mods[module] if module in mods else torch, cls.__name__, cls)
        return cls

    class Hooks:
        def __init__(self, guard_export_fn: Any = None, guard_fail_fn: Any = None):
            self.guard_export_fn, self.guard_fail_fn = guard_export_fn, guard_fail_fn

    class _TorchCompileInductorWrapper:
        compiler_name = "inductor"

        def __init__(self, mode: str, options: Any, dynamic: Any):
            self.config: Dict[str, Any] = {"triton.cudagraphs": False}
            self.dynamic = dynamic

    class ConvertFrame:
        def __init__(self, compiler_fn: Any, hooks: Any):
            self._torchdynamo_orig_callable = compiler_fn
            self._hooks = hooks

    class CatchErrorsWrapper:
        def __init__(self, callback: Any, hooks: Any):
            self._torchdynamo_orig_callable = callback
            self.hooks = hooks

    class OptimizeContext:
        def __init__(self, callback: Any, backend_ctx_ctor: Any, first_ctx: bool = False, *, export: bool = False,
                     dynamic: Any = None, compiler_config: Any = None):
            self.callback, self._backend_ctx_ctor, self.first_ctx = callback, backend_ctx_ctor, first_ctx
            self.export, self._dynamic, self.compiler_config = export, dynamic, compiler_config

        def __reduce__(self) -> Tuple[Any, ...]:
            return (self.__class__, (self.callback, self._backend_ctx_ctor, self.first_ctx),
                    {"export": self.export, "dynamic": self._dynamic, "compiler_config": self.compiler_config})

    class OptimizedModule(nn.Module):
        def __init__(self, mod: nn.Module, dynamo_ctx: Any):
            super().__init__()
            self._orig_mod = mod
            self.dynamo_ctx = dynamo_ctx

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self._orig_mod(*args, **kwargs)

        def __reduce__(self) -> Tuple[Any, ...]:
            return (self.__class__, (self._orig_mod, self.dynamo_ctx))

    place(Hooks, "torch._dynamo.hooks")
    place(ConvertFrame, "torch._dynamo.convert_frame")
    place(CatchErrorsWrapper, "torch._dynamo.convert_frame")
    place(OptimizeContext, "torch._dynamo.eval_frame")
    place(OptimizedModule, "torch._dynamo.eval_frame")
    place(_TorchCompileInductorWrapper, "torch")

    def compile(module: nn.Module, mode: str = "default") -> nn.Module:
        hooks = Hooks()
        callback = CatchErrorsWrapper(ConvertFrame(_TorchCompileInductorWrapper(mode, None, None), hooks), hooks)
        return OptimizedModule(module, OptimizeContext(callback, contextlib.nullcontext, first_ctx=True))

    sys.modules.update(mods)
    try:
        yield compile
    finally:
        for n in names:
            sys.modules.pop(n, None)
        delattr(torch, "_TorchCompileInductorWrapper")


def has_torch_compile() -> bool:
    return hasattr(torch, "compile") and importlib.util.find_spec("torch._dynamo") is not None


def save_tezzeret(path: str, module: nn.Module, ir: Dict[str, Any]) -> None:
    """Write what Tezzeret's run_fast_compilation writes (worker.py):
    torch.save({"module": torch.compile(module, mode="default"),
    "state_dict": compiled.state_dict(), "ir_metadata": ir}). With a real
    torch.compile whose result torch.save refuses (torch 2.0 to 2.3),
    Tezzeret itself fails; that raises here too."""
    def write(compiled: nn.Module) -> None:
        buf = io.BytesIO()
        torch.save({"module": compiled, "state_dict": compiled.state_dict(), "ir_metadata": ir}, buf)
        with open(path, "wb") as f:
            f.write(buf.getvalue())

    if has_torch_compile():
        write(torch.compile(module, mode="default"))
        return
    with dynamo_emulation() as compile:
        write(compile(module, mode="default"))


def tezzeret_ir_to_module(ir: Dict[str, Any]) -> nn.Sequential:
    """Tezzeret's ir_to_module (worker.py), the modules it compiles."""
    if ir.get("type", "linear") == "linear":
        return nn.Sequential(nn.Linear(ir.get("input_size", 10), ir.get("hidden_size", 20)), nn.ReLU(),
                             nn.Linear(ir.get("hidden_size", 20), ir.get("output_size", 10)))
    return nn.Sequential(nn.Conv2d(ir.get("in_channels", 3), ir.get("out_channels", 16), ir.get("kernel_size", 3)),
                         nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())


# ---------------------------------------------------------------------------
# The forms, and the cases the Go test loads.


def _sample(shape: List[int]) -> torch.Tensor:
    return torch.randn([2] + shape, generator=torch.Generator().manual_seed(5))


# form -> writer(path, model, input_shape, ir): writes model in that form.
FORMS: Dict[str, Callable[[str, nn.Module, List[int], Dict[str, Any]], None]] = {
    "zip": lambda p, m, s, ir: torch.save(m, p),
    "legacy": lambda p, m, s, ir: torch.save(m, p, _use_new_zipfile_serialization=False),
    "tezzeret": lambda p, m, s, ir: save_tezzeret(p, m, ir),
    "script": lambda p, m, s, ir: torch.jit.script(m).save(p),
    "trace": lambda p, m, s, ir: torch.jit.trace(m, _sample(s)).save(p),
}


def case_models() -> List[Tuple[str, nn.Sequential, List[int], str, Dict[str, Any]]]:
    """(name, model in eval mode, input shape, dtype, ir_metadata extras):
    esper_export's built-in models (every operation, nested sequentials,
    F16 and BF16 weights), a Sequential built from an OrderedDict, and the
    two modules Tezzeret's ir_to_module builds, with their IR."""
    out = [(n, m.eval(), s, d, {}) for n, m, s, d in ee.selftest_models()]
    torch.manual_seed(99)
    named = nn.Sequential(OrderedDict(fc=nn.Linear(12, 16), act=nn.GELU(),
                                      head=nn.Sequential(OrderedDict(norm=nn.LayerNorm(16), out=nn.Linear(16, 4)))))
    out.append(("named-sequential", named.eval(), [12], "F32", {}))
    for ir, shape in (({"type": "linear", "input_size": 10, "output_size": 10, "hidden_size": 20}, [10]),
                      ({"type": "conv", "in_channels": 3, "out_channels": 16, "kernel_size": 3}, [3, 8, 8])):
        out.append((f"tezzeret-ir-{ir['type']}", tezzeret_ir_to_module(ir).eval(), shape, "F32", ir))
    return out


def write_cases(out_dir: str) -> Dict[str, Any]:
    """Write every model of case_models() in every form and convert it into
    a golden-layout case folder out_dir/<form>-<model>: source.pt (the
    PyTorch file), kernel.safetensors (the converter's output), and
    io.safetensors, case.json, compiled_kernel.json with the original
    model's float64 and float32 outputs. Tezzeret files carry their ids and
    (except for Tezzeret's conv IR, which declares none) their input shape
    in ir_metadata and are converted without them; the other forms are
    given them. Returns {"cases": names, "skipped": reasons, "torch":
    version}."""
    cases, skipped = [], []
    for model_name, model, shape, dtype, ir_extra in case_models():
        for form, write in FORMS.items():
            case = f"{form}-{model_name}"
            d = os.path.join(out_dir, case)
            os.makedirs(d, exist_ok=True)
            src = os.path.join(d, "source.pt")
            ir = dict(ir_extra, kernel_id=case, blueprint_id=f"bp-{case}", name=f"{model_name} via {form}")
            declared = ir_extra.get("type") != "conv"
            if declared and len(shape) > 1:
                ir["input_shape"] = shape
            elif declared and "input_size" not in ir:
                ir["input_size"] = shape[0]
            try:
                write(src, model, shape, ir)
            except Exception as err:  # noqa: BLE001  (a torch whose torch.save cannot write this form)
                skipped.append(f"{case}: this torch cannot write it ({type(err).__name__}: {err})")
                shutil.rmtree(d)
                continue
            kpath = os.path.join(d, "kernel.safetensors")
            if form == "tezzeret":  # ids (and the shape, where declared) from ir_metadata
                meta = ec.convert(src, kpath, None if declared else shape, dtype=dtype)
            else:
                meta = ec.convert(src, kpath, shape, kernel_id=case, dtype=dtype)
            ee.write_reference(d, model, shape, meta, dtype=dtype)
            cases.append(case)
    return {"cases": cases, "skipped": skipped, "torch": torch.__version__}


# ---------------------------------------------------------------------------
# Unit checks.


class MyLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class Linear(nn.Module):
    """A user class that TorchScript records under the name Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.weight.t() + self.bias)


class Chain(nn.Module):
    """A custom module whose forward is a plain chain of its children."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.act = nn.Tanh()
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def sample_model() -> nn.Sequential:
    torch.manual_seed(11)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.GELU(approximate="tanh"), nn.Dropout(0.25),
                      nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Sigmoid()), nn.Linear(16, 3))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def conv_model() -> nn.Sequential:
    torch.manual_seed(12)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, (3, 1), stride=2, padding=(1, 0), dilation=(2, 1), groups=2),
                         nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Identity(), nn.Linear(32, 5)).eval()


class Case(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exported(self, model: nn.Module, shape: List[int], **kw: Any) -> bytes:
        return ee.export_bytes(model, shape, **kw)[0]

    def converted(self, src: str, *args: Any, **kw: Any) -> Tuple[bytes, Dict[str, Any]]:
        dst = self.path("out.safetensors")
        meta = ec.convert(src, dst, *args, **kw)
        with open(dst, "rb") as f:
            return f.read(), meta

    def assertRefused(self, src: str, exc: type, pattern: str, **kw: Any) -> None:
        dst = self.path("refused.safetensors")
        with self.assertRaisesRegex(exc, pattern):
            ec.convert(src, dst, **kw)
        self.assertFalse(os.path.exists(dst), "a refused conversion wrote its output")


class ConvertsEveryForm(Case):
    """Each form converts into the very file esper_export writes for the
    original model: same graph, same weights, same metadata."""

    def check_forms(self, model: nn.Sequential, shape: List[int], forms: List[str]) -> None:
        want = self.exported(model, shape, kernel_id="k", blueprint_id="bp", name="n")
        for form in forms:
            with self.subTest(form=form):
                src = self.path(form + ".pt")
                FORMS[form](src, model, shape, {"input_shape": shape})
                got, meta = self.converted(src, shape, kernel_id="k", blueprint_id="bp", name="n")
                self.assertEqual(got, want)
                self.assertEqual(meta["input_shape"], shape)

    def test_sequential_in_every_form(self) -> None:
        self.check_forms(sample_model(), [8], list(FORMS))

    def test_convnet_in_every_form(self) -> None:
        self.check_forms(conv_model(), [3, 9, 9], list(FORMS))

    def test_named_sequential(self) -> None:
        torch.manual_seed(2)
        model = nn.Sequential(OrderedDict(fc=nn.Linear(5, 7), act=nn.ReLU(),
                                          block=nn.Sequential(OrderedDict(out=nn.Linear(7, 2))))).eval()
        self.check_forms(model, [5], ["zip", "script", "trace"])

    def test_custom_module_whose_forward_chains_its_children(self) -> None:
        torch.manual_seed(3)
        chain = Chain().eval()
        twin = nn.Sequential(chain.fc, chain.act, chain.out)
        want = self.exported(twin, [6], kernel_id="k")
        for form, script in (("script", torch.jit.script(chain)), ("trace", torch.jit.trace(chain, _sample([6])))):
            with self.subTest(form=form):
                script.save(self.path(form + ".pt"))
                got, _ = self.converted(self.path(form + ".pt"), [6], kernel_id="k")
                self.assertEqual(got, want)

    def test_input_shape_from_a_leading_linear(self) -> None:
        FORMS["zip"](self.path("m.pt"), sample_model(), [8], {})
        _, meta = self.converted(self.path("m.pt"))
        self.assertEqual((meta["input_shape"], meta["output_shape"]), ([8], [3]))

    def test_weights_in_f16(self) -> None:
        model = sample_model()
        FORMS["script"](self.path("m.pt"), model, [8], {})
        got, _ = self.converted(self.path("m.pt"), [8], kernel_id="k", dtype="F16")
        self.assertEqual(got, self.exported(model, [8], kernel_id="k", dtype="F16"))


class TezzeretArtifacts(Case):
    IR = {"type": "linear", "input_size": 10, "output_size": 10, "hidden_size": 20,
          "blueprint_id": "bp-7", "kernel_id": "kern-7", "name": "seed 7"}

    def test_dict_layout_as_tezzeret_writes_it(self) -> None:
        model = tezzeret_ir_to_module(self.IR).eval()
        save_tezzeret(self.path("compiled.pt"), model, self.IR)
        with zipfile.ZipFile(self.path("compiled.pt")) as z:
            pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        if not has_torch_compile():
            # What torch 2.x's OptimizedModule.__reduce__ pickles.
            self.assertIn(b"ctorch._dynamo.eval_frame\nOptimizedModule\n", pkl)
            self.assertIn(b"ctorch._dynamo.eval_frame\nOptimizeContext\n", pkl)
            self.assertIn(b"ctorch\n_TorchCompileInductorWrapper\n", pkl)
        self.assertIn(b"_orig_mod.0.weight", pkl)
        got, meta = self.converted(self.path("compiled.pt"))
        if not has_torch_compile():
            # The stand-ins are gone once the file is loaded.
            self.assertNotIn("torch._dynamo", sys.modules)
            self.assertFalse(hasattr(torch, "_dynamo") or "__getattr__" in vars(torch))
        self.assertEqual((meta["kernel_id"], meta["blueprint_id"], meta["name"]), ("kern-7", "bp-7", "seed 7"))
        self.assertEqual((meta["input_shape"], meta["output_shape"]), ([10], [10]))
        self.assertEqual(got, self.exported(model, [10], kernel_id="kern-7", blueprint_id="bp-7", name="seed 7"))

    def test_bytes_as_run_fast_compilation_returns_them(self) -> None:
        model = tezzeret_ir_to_module(self.IR).eval()
        save_tezzeret(self.path("compiled.pt"), model, self.IR)
        with open(self.path("compiled.pt"), "rb") as f:
            compiled_binary = f.read()
        data, meta = ec.convert_bytes(compiled_binary)
        self.assertEqual(data, self.exported(model, [10], kernel_id="kern-7", blueprint_id="bp-7", name="seed 7"))
        self.assertNotIn("checksum", meta)
        with self.assertRaisesRegex(ec.ConversionError, r"^blueprint bp-7: not a PyTorch file"):
            ec.convert_bytes(b"nonsense", label="blueprint bp-7")

    def test_arguments_override_ir_ids(self) -> None:
        save_tezzeret(self.path("c.pt"), tezzeret_ir_to_module(self.IR).eval(), self.IR)
        _, meta = self.converted(self.path("c.pt"), [10], kernel_id="k2", blueprint_id="bp2", name="n2")
        self.assertEqual((meta["kernel_id"], meta["blueprint_id"], meta["name"]), ("k2", "bp2", "n2"))

    def test_state_dict_fills_the_weights(self) -> None:
        # The dict's state_dict, not the module's own tensors, holds the weights.
        module = tezzeret_ir_to_module(self.IR).eval()
        weights = tezzeret_ir_to_module(self.IR).eval()
        with dynamo_emulation() as compile:
            sd = compile(weights).state_dict()
            self.assertTrue(all(k.startswith("_orig_mod.") for k in sd), list(sd))
            torch.save({"module": compile(module), "state_dict": sd, "ir_metadata": self.IR}, self.path("c.pt"))
        got, _ = self.converted(self.path("c.pt"))
        self.assertEqual(got, self.exported(weights, [10], kernel_id="kern-7", blueprint_id="bp-7", name="seed 7"))
        self.assertNotEqual(got, self.exported(module, [10], kernel_id="kern-7", blueprint_id="bp-7", name="seed 7"))

    def test_plain_module_and_unprefixed_state_dict(self) -> None:
        module = tezzeret_ir_to_module(self.IR).eval()
        weights = tezzeret_ir_to_module(self.IR).eval()
        torch.save({"module": module, "state_dict": weights.state_dict(), "ir_metadata": self.IR}, self.path("c.pt"))
        got, _ = self.converted(self.path("c.pt"))
        self.assertEqual(got, self.exported(weights, [10], kernel_id="kern-7", blueprint_id="bp-7", name="seed 7"))

    def test_module_without_parameters(self) -> None:
        model = nn.Sequential(nn.Tanh(), nn.Flatten())
        save_tezzeret(self.path("c.pt"), model, {"input_shape": [2, 3]})
        got, meta = self.converted(self.path("c.pt"), kernel_id="k")
        self.assertEqual((meta["input_shape"], meta["output_shape"], meta["parameter_count"]), ([2, 3], [6], 0))
        self.assertEqual(got, self.exported(model, [2, 3], kernel_id="k"))

    def test_a_torch_that_has_the_compile_classes_loads_them_as_they_are(self) -> None:
        # As on torch 2.x: the real OptimizedModule unpickles and is unwrapped.
        model = tezzeret_ir_to_module(self.IR).eval()
        with dynamo_emulation() as compile:
            torch.save({"module": compile(model), "ir_metadata": self.IR}, self.path("c.pt"))
            art = ec.load_artifact(self.path("c.pt"))
            self.assertTrue(art.compiled)
            self.assertEqual(type(art.model), nn.Sequential)

    def test_refusals(self) -> None:
        model = tezzeret_ir_to_module(self.IR).eval()
        cases = [
            ("wrong keys", {"module": model, "state_dict": {"0.weight": torch.zeros(20, 10)}},
             ec.ConversionError, r"(?s)'state_dict' does not fit the module: .*Missing key"),
            ("not tensors", {"module": model, "state_dict": {"0.weight": 3}},
             ec.ConversionError, r"'state_dict' is a dict, not a mapping of names to tensors"),
            ("ir not a dict", {"module": model, "ir_metadata": "linear"},
             ec.ConversionError, r"'ir_metadata' is a str, not a dict"),
            ("module not a module", {"module": {"a": 1}},
             ec.ConversionError, r"'module' is a dict with keys \['a'\], not a torch.nn.Module"),
            ("bad input_size", {"module": model, "ir_metadata": {"input_size": "10"}},
             ec.ConversionError, r"ir_metadata.input_size is \['10'\]"),
            ("output_size broken", {"module": model, "ir_metadata": {"input_size": 10, "output_size": 11}},
             ec.ConversionError, r"output shape is \[10\], ir_metadata.output_size says 11"),
            ("bad kernel_id", {"module": model, "ir_metadata": {"input_size": 10, "kernel_id": 7}},
             ec.ConversionError, r"ir_metadata.kernel_id is 7, not a non-empty string"),
            ("unsupported op", {"module": nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4))},
             ec.UnsupportedModuleError, r"^unsupported module 'LSTM' at '1'$"),
        ]
        for name, obj, exc, pattern in cases:
            with self.subTest(name=name):
                torch.save(obj, self.path("c.pt"))
                self.assertRefused(self.path("c.pt"), exc, pattern)

    def test_declared_input_shape_is_a_promise(self) -> None:
        save_tezzeret(self.path("c.pt"), tezzeret_ir_to_module(self.IR).eval(), self.IR)
        self.assertRefused(self.path("c.pt"), ec.ConversionError,
                           r"input_shape \[12\] contradicts the file's ir_metadata, which declares \[10\]",
                           input_shape=[12])


class RefusesUnsupported(Case):
    def test_torch_save_ops_by_name_and_position(self) -> None:
        cases = [
            ("zip", nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.LSTM(8, 8)), "LSTM", "3"),
            ("legacy", nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 1))), "Conv1d", "1.1"),
            ("zip", nn.Sequential(MyLinear(8, 8)), "MyLinear", "0"),
            ("zip", nn.Sequential(nn.Linear(8, 8), Scale()), "Scale", "1"),
            ("tezzeret", nn.Sequential(nn.Linear(8, 8), nn.MaxPool1d(2)), "MaxPool1d", "1"),
        ]
        for form, model, name, where in cases:
            with self.subTest(form=form, name=name):
                FORMS[form](self.path("m.pt"), model, [8], {"input_size": 8})
                self.assertRefused(self.path("m.pt"), ec.UnsupportedModuleError,
                                   rf"^unsupported module '{name}' at '{where}'$", input_shape=[8])

    def test_torchscript_ops_by_name_and_position(self) -> None:
        cases = [
            ("script", nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.LSTM(8, 8)), "LSTM", "3"),
            ("script", nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 1))), "Conv1d", "1.1"),
            ("trace", nn.Sequential(nn.Linear(8, 8), Scale()), "Scale", "1"),
            ("trace", nn.Sequential(MyLinear(8, 8)), "MyLinear", "0"),
            ("script", nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), nn.Softmax(dim=1))), "Softmax", "1.1"),
        ]
        for form, model, name, where in cases:
            with self.subTest(form=form, name=name):
                FORMS[form](self.path("m.pt"), model.eval(), [8], {})
                self.assertRefused(self.path("m.pt"), ec.UnsupportedModuleError,
                                   rf"^unsupported module '{name}' at '{where}'$", input_shape=[8])

    def test_a_user_class_named_like_torch_nn(self) -> None:
        torch.jit.script(nn.Sequential(nn.Linear(4, 4), Linear())).save(self.path("m.pt"))
        self.assertRefused(self.path("m.pt"), ec.UnsupportedModuleError,
                           r"^unsupported module 'Linear' at '1': its TorchScript type __torch__\.\S*Linear "
                           r"is not torch\.nn\.Linear$", input_shape=[4])

    def test_settings_the_format_cannot_express(self) -> None:
        cases = [
            ("script", nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), "Conv2d", "padding_mode"),
            ("trace", nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), "Conv2d",
             r"its traced forward runs aten::\S*pad"),
            ("script", nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False)), "BatchNorm2d",
             "track_running_stats"),
        ]
        for form, model, name, detail in cases:
            with self.subTest(form=form, detail=detail):
                FORMS[form](self.path("m.pt"), model.eval(), [1, 6, 6], {})
                self.assertRefused(self.path("m.pt"), ec.UnsupportedModuleError,
                                   rf"^unsupported module '{name}' at '0': .*{detail}", input_shape=[1, 6, 6])

    def test_traced_in_training_mode(self) -> None:
        for model, name in ((nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), "BatchNorm1d"),
                            (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), "Dropout")):
            with self.subTest(name=name):
                torch.jit.trace(model.train(), _sample([4]), check_trace=False).save(self.path("m.pt"))
                self.assertRefused(self.path("m.pt"), ec.UnsupportedModuleError,
                                   rf"^unsupported module '{name}' at '1': traced in training mode", input_shape=[4])

    def test_cli_exit_status_and_message(self) -> None:
        FORMS["zip"](self.path("m.pt"), nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.LSTM(8, 8)),
                     [8], {})
        out = self.path("k.safetensors")
        r = subprocess.run([sys.executable, os.path.join(HERE, "esper_convert.py"), "--input", self.path("m.pt"),
                            "--output", out, "--input-shape", "8"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stderr.strip(), "esper_convert: unsupported module 'LSTM' at '3'")
        self.assertFalse(os.path.exists(out))


class RefusesNonSequentialTorchScript(Case):
    def test_forwards_that_are_not_a_chain(self) -> None:
        cases = [
            ("script", Residual(), r"the forward of 'Residual' at '<root>' is not a plain sequential chain: "
                                   r"it runs aten::add"),
            ("trace", Residual(), r"the forward of 'Residual' at '<root>' is not a plain sequential chain: "
                                  r"it runs aten::add"),
            ("script", nn.Sequential(nn.Linear(4, 4), Residual()),
             r"the forward of 'Residual' at '1' is not a plain sequential chain: it runs aten::add"),
            ("script", Twice(), r"the forward of 'Twice' at '<root>' calls child 'fc' more than once"),
            ("script", Unused(), r"the forward of 'Unused' at '<root>' never calls child 'spare'"),
            ("script", TwoInputs(), r"the forward of 'TwoInputs' at '<root>' takes 2 arguments"),
        ]
        for form, model, pattern in cases:
            with self.subTest(model=type(model).__name__, form=form):
                model.eval()
                if form == "script":
                    torch.jit.script(model).save(self.path("m.pt"))
                else:
                    torch.jit.trace(model, _sample([4])).save(self.path("m.pt"))
                self.assertRefused(self.path("m.pt"), ec.NotSequentialError, "^" + pattern, input_shape=[4])

    def test_root_that_is_not_a_container(self) -> None:
        torch.jit.script(nn.Linear(4, 4)).save(self.path("m.pt"))
        self.assertRefused(self.path("m.pt"), ec.UnsupportedModuleError,
                           r"^unsupported module 'Linear' at '<root>': the root must be", input_shape=[4])


class RefusesOtherFiles(Case):
    def write(self, name: str, data: bytes) -> str:
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def test_files_that_hold_no_module(self) -> None:
        ee.export(nn.Sequential(nn.Linear(2, 2)), self.path("k.safetensors"), [2])
        torch.save(sample_model().state_dict(), self.path("sd.pt"))
        torch.save([1, 2], self.path("list.pt"))
        z = io.BytesIO()
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("a/readme.txt", "hi")
        cases = [
            (self.path("k.safetensors"), r"already a safetensors file"),
            (self.path("sd.pt"), r"holds a state_dict only, which has no module structure; export it with "
                                 r"esper_export.py export --model"),
            (self.path("list.pt"), r"holds a list, not a torch.nn.Module"),
            (self.write("pickle.bin", b"\x80\x04\x95\x00"), r"not a PyTorch file"),
            (self.write("other.zip", z.getvalue()), r"a zip archive, but neither a torch.save archive"),
        ]
        for src, pattern in cases:
            with self.subTest(pattern=pattern):
                self.assertRefused(src, ec.ConversionError, pattern)

    def test_input_shape_problems(self) -> None:
        FORMS["zip"](self.path("c.pt"), conv_model(), [3, 9, 9], {})
        self.assertRefused(self.path("c.pt"), ec.ConversionError, r"the input shape is unknown")
        self.assertRefused(self.path("c.pt"), ec.ConversionError, r"input shape \[4, 9, 9\] does not fit the module",
                           input_shape=[4, 9, 9])
        FORMS["script"](self.path("s.pt"), conv_model(), [3, 9, 9], {})
        self.assertRefused(self.path("s.pt"), ec.ConversionError, r"input shape \[4, 9, 9\] does not fit",
                           input_shape=[4, 9, 9])


class CommandLine(Case):
    def test_converts_with_compiled_kernel_document(self) -> None:
        save_tezzeret(self.path("compiled.pt"), tezzeret_ir_to_module(TezzeretArtifacts.IR).eval(),
                      TezzeretArtifacts.IR)
        out, doc = self.path("kernel.safetensors"), self.path("compiled.json")
        r = subprocess.run([sys.executable, os.path.join(HERE, "esper_convert.py"), "--input", self.path("compiled.pt"),
                            "--output", out, "--compiled-kernel", doc, "--binary-ref",
                            "s3://esper-artifacts/kernels/kern-7/kernel.safetensors"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        meta = json.loads(r.stdout)
        self.assertEqual((meta["kernel_id"], meta["blueprint_id"], meta["input_shape"]), ("kern-7", "bp-7", [10]))
        with open(doc) as f:
            ck = json.load(f)
        self.assertEqual(ck["metadata"]["checksum"], meta["checksum"])
        self.assertEqual(ck["binary_ref"], "s3://esper-artifacts/kernels/kern-7/kernel.safetensors")


def _main() -> int:
    p = argparse.ArgumentParser(description="Write the converter's golden cases (see write_cases).")
    p.add_argument("cmd", choices=["cases"])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    print(json.dumps(write_cases(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
