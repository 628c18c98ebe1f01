"""Triton's binary tensor data extension, as the host speaks it.

A request body is a JSON header followed by the raw tensor bytes, in the
order the header lists the inputs; the HTTP header
``Inference-Header-Content-Length`` gives the JSON header's length, and
each input carries ``"parameters": {"binary_data_size": N}`` instead of
``data``. Every tensor here is FP32, little-endian, row-major (C order).
The client asks for binary outputs (request parameter
``binary_data_output``) and refuses an answer that carries JSON ``data``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import KasminaProtocolError

#: The HTTP header that gives the length of the JSON header of a binary body.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: FP32, little-endian: the only datatype on this wire.
FP32 = np.dtype("<f4")

_MAX_RANK = 8  # the host refuses more dimensions (runtime/oip/API.md)


def as_fp32(name: str, value: Any) -> np.ndarray:
    """``value`` as a C-contiguous little-endian float32 array, batch first.

    Raises ``TypeError`` for a non-numeric array (naming ``name``) and
    ``ValueError`` for a scalar or more than 8 dimensions.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name}: a {arr.dtype} array cannot be sent as FP32")
    if arr.ndim == 0:
        raise ValueError(f"{name}: a scalar has no batch dimension; send an array of shape [batch, ...]")
    if arr.ndim > _MAX_RANK:
        raise ValueError(f"{name}: {arr.ndim} dimensions, at most {_MAX_RANK}")
    return np.ascontiguousarray(arr, dtype=FP32)


def encode_request(inputs: Sequence[Tuple[str, np.ndarray]],
                   parameters: Optional[Mapping[str, Any]] = None) -> Tuple[bytes, int]:
    """The body of a binary inference request and the length of its JSON header.

    ``inputs`` are (name, array) pairs already converted by :func:`as_fp32`.
    The request asks for every output in binary.
    """
    params: Dict[str, Any] = {"binary_data_output": True}
    if parameters:
        params.update(parameters)
    header = {
        "inputs": [
            {"name": name, "shape": list(arr.shape), "datatype": "FP32",
             "parameters": {"binary_data_size": arr.nbytes}}
            for name, arr in inputs
        ],
        "parameters": params,
    }
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"".join([head] + [memoryview(arr).cast("B") for _, arr in inputs]), len(head)


def encode_shared_request(inputs: Sequence[Tuple[str, np.ndarray, str, int]],
                          outputs: Sequence[Tuple[str, Optional[Tuple[str, int, int]]]] = (),
                          parameters: Optional[Mapping[str, Any]] = None) -> bytes:
    """The JSON body of an inference request whose inputs lie in system
    shared memory: ``inputs`` are (name, array, region, offset) with the
    array's bytes already at that offset of that region. ``outputs``, when
    given, lists the outputs asked for (the answer then has no other), each
    with (region, offset, byte_size) to be written there, the answer
    describing it without its values, or None to come back in binary; with
    none listed, every output comes back in binary.
    """
    params: Dict[str, Any] = {"binary_data_output": True}
    if parameters:
        params.update(parameters)
    header: Dict[str, Any] = {
        "inputs": [
            {"name": name, "shape": list(arr.shape), "datatype": "FP32",
             "parameters": {"shared_memory_region": region, "shared_memory_offset": offset,
                            "shared_memory_byte_size": arr.nbytes}}
            for name, arr, region, offset in inputs
        ],
        "parameters": params,
    }
    if outputs:
        header["outputs"] = [
            {"name": name, "parameters": {"binary_data": True} if where is None else {
                "shared_memory_region": where[0], "shared_memory_offset": where[1], "shared_memory_byte_size": where[2]}}
            for name, where in outputs
        ]
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")


#: Reads an output that the host wrote to shared memory, given its shape.
SharedOutputReader = Callable[[List[int]], np.ndarray]


@dataclass
class InferResponse:
    """A decoded inference answer: outputs by name, and the response parameters."""

    model_name: str
    outputs: Dict[str, np.ndarray]
    parameters: Dict[str, Any] = field(default_factory=dict)


def _shape(name: str, raw: Any) -> List[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise KasminaProtocolError(200, f"output {name!r}: shape {raw!r} is not a list of non-negative integers")
    return raw


def decode_response(body: bytearray, header_length: Optional[str], status: int = 200,
                    shared: Optional[Mapping[str, SharedOutputReader]] = None) -> InferResponse:
    """Decodes an inference answer whose outputs are binary.

    ``header_length`` is the value of ``Inference-Header-Content-Length``
    (``None`` when the answer had none: then the whole body is the JSON
    header and it must carry no output data). Every output must be FP32
    with a ``binary_data_size`` equal to its shape times 4, and the bytes
    must be used up exactly. The arrays are views of ``body`` (writable
    when ``body`` is a ``bytearray``). An output named in ``shared`` was
    written to shared memory: it carries neither data nor a size, and its
    reader gives its values for the shape the answer states.
    """
    if header_length is None:
        hlen = len(body)
    else:
        text = header_length.strip()
        if not text.isdigit():
            raise KasminaProtocolError(status, f"{HEADER_LENGTH} {header_length!r} is not a number")
        hlen = int(text)
        if hlen == 0 or hlen > len(body):
            raise KasminaProtocolError(status, f"{HEADER_LENGTH} {hlen} does not fit a body of {len(body)} bytes")
    try:
        header = json.loads(bytes(body[:hlen]))
    except (UnicodeDecodeError, ValueError) as e:
        raise KasminaProtocolError(status, f"the answer's JSON header does not parse: {e}") from None
    if not isinstance(header, dict):
        raise KasminaProtocolError(status, "the answer's JSON header is not an object")
    outputs: Dict[str, np.ndarray] = {}
    offset = hlen
    for i, out in enumerate(header.get("outputs") or []):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise KasminaProtocolError(status, f"output {i} has no name")
        name = out["name"]
        if "data" in out:
            raise KasminaProtocolError(status, f"output {name!r} came back as JSON data, not binary")
        if out.get("datatype") != "FP32":
            raise KasminaProtocolError(status, f"output {name!r} is {out.get('datatype')!r}, not FP32")
        shape = _shape(name, out.get("shape"))
        if shared and name in shared:
            if name in outputs:
                raise KasminaProtocolError(status, f"output {name!r} appears twice")
            if "binary_data_size" in (out.get("parameters") or {}):
                raise KasminaProtocolError(status, f"output {name!r} was asked for in shared memory and came back in the body")
            outputs[name] = shared[name](shape)
            continue
        size = (out.get("parameters") or {}).get("binary_data_size")
        count = int(np.prod(shape, dtype=np.int64))
        if not isinstance(size, int) or isinstance(size, bool) or size != count * 4:
            raise KasminaProtocolError(status, f"output {name!r}: binary_data_size {size!r}, want {count * 4} for shape {shape}")
        if offset + size > len(body):
            raise KasminaProtocolError(status, f"output {name!r}: {size} bytes announced, {len(body) - offset} left in the body")
        if name in outputs:
            raise KasminaProtocolError(status, f"output {name!r} appears twice")
        if count == 0:
            outputs[name] = np.empty(shape, dtype=FP32)
        else:
            outputs[name] = np.frombuffer(body, dtype=FP32, count=count, offset=offset).reshape(shape)
        offset += size
    if offset != len(body):
        raise KasminaProtocolError(status, f"{len(body) - offset} bytes left over after the outputs")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise KasminaProtocolError(status, "the answer's parameters are not an object")
    return InferResponse(model_name=str(header.get("model_name", "")), outputs=outputs, parameters=params)
