"""Golden kernel cases (kernels/testdata/golden/README.md) for the
real-binary tests, read with the golden set's own make_grads.py (standard
library and NumPy: nothing is unpickled), and the case's module rebuilt in
PyTorch from its module graph and the kernel's own weights."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# The reader and the rebuild are the golden set's own (make_grads.py, which
# wrote grad.safetensors): one implementation for the cases' generator,
# bench/layer and these tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                                "kernels", "testdata", "golden"))
import make_grads  # noqa: E402


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
        try:
            return make_grads.model(self.module, self.tensors, dtype)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None


def load_cases(root: str) -> List[Case]:
    """Every case folder (with case.json) under ``root``, by name."""
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "case.json")):
            continue
        with open(os.path.join(d, "case.json")) as f:
            case = json.load(f)
        tensors, meta = make_grads.read_safetensors(os.path.join(d, "kernel.safetensors"))
        module = json.loads(meta["esper.module"]) if "esper.module" in meta else case["module"]
        io, _ = make_grads.read_safetensors(os.path.join(d, "io.safetensors"))
        x = io["input"][1].astype(np.float32)
        expected = io["expected"][1].astype(np.float64)
        go: Optional[np.ndarray] = None
        if os.path.isfile(os.path.join(d, "grad.safetensors")):
            grads, _ = make_grads.read_safetensors(os.path.join(d, "grad.safetensors"))
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
