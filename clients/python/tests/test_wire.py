"""The binary tensor extension codec, byte for byte."""

import json
import struct

import numpy as np
import pytest

from kasmina_host import KasminaProtocolError
from kasmina_host.wire import FP32, as_fp32, decode_response, encode_request


def test_request_bytes_are_the_json_header_then_little_endian_fp32():
    x = np.array([[1.0, -2.5, 3.0], [0.5, 0.0, 1e-3]], dtype=np.float64)
    d = np.array([[7.0], [8.0]], dtype=np.float32)
    body, hlen = encode_request([("input", as_fp32("input", x)), ("default", as_fp32("default", d))],
                                {"keep_forward": True})
    head = json.loads(body[:hlen])
    assert head == {
        "inputs": [
            {"name": "input", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
            {"name": "default", "shape": [2, 1], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        ],
        "parameters": {"binary_data_output": True, "keep_forward": True},
    }
    assert body[hlen:] == struct.pack("<6f", 1.0, -2.5, 3.0, 0.5, 0.0, np.float32(1e-3)) + struct.pack("<2f", 7.0, 8.0)


def test_non_contiguous_and_big_endian_arrays_go_out_row_major_little_endian():
    x = np.arange(6, dtype=">f8").reshape(3, 2).T  # Fortran-ordered view, big-endian
    body, hlen = encode_request([("input", as_fp32("input", x))])
    assert body[hlen:] == struct.pack("<6f", 0, 2, 4, 1, 3, 5)


@pytest.mark.parametrize("value,err", [
    (np.array([1 + 2j]), TypeError),
    (np.array(["a"]), TypeError),
    (np.array([object()]), TypeError),
    (np.float32(1.0), ValueError),
    (np.zeros((1,) * 9), ValueError),
])
def test_as_fp32_refuses_what_is_not_a_batch_of_numbers(value, err):
    with pytest.raises(err, match="input"):
        as_fp32("input", value)


def _answer(outputs, params=None, extra=b"", header_length=None, mutate=None):
    doc = {"model_name": "m", "parameters": params or {},
           "outputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape),
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in outputs]}
    if mutate:
        mutate(doc)
    head = json.dumps(doc).encode()
    body = bytearray(head + b"".join(a.astype("<f4").tobytes() for _, a in outputs) + extra)
    return body, str(len(head)) if header_length is None else header_length


def test_decode_reads_outputs_in_order_as_writable_arrays():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[np.nan, np.inf]], dtype=np.float32)
    body, hl = _answer([("output", a), ("grad_input", b)], {"forward_id": "f1"})
    r = decode_response(body, hl)
    assert r.parameters == {"forward_id": "f1"}
    np.testing.assert_array_equal(r.outputs["output"], a)
    np.testing.assert_array_equal(r.outputs["grad_input"], b)  # NaN and Inf pass untouched
    assert r.outputs["output"].dtype == FP32 and r.outputs["output"].flags.writeable


@pytest.mark.parametrize("case,msg", [
    ("json_data", "JSON data, not binary"),
    ("left_over", "4 bytes left over"),
    ("missing", "bytes announced"),
    ("header_length_text", "is not a number"),
    ("header_length_zero", "does not fit"),
    ("header_length_past_end", "does not fit"),
    ("size_mismatch", "binary_data_size 20, want 24"),
    ("fp64", "not FP32"),
    ("bad_shape", "not a list of non-negative integers"),
    ("twice", "appears twice"),
])
def test_decode_refuses_a_malformed_answer(case, msg):
    a = np.ones((2, 3), np.float32)
    outputs, extra, hl, mutate = [("output", a)], b"", None, None
    if case == "json_data":
        mutate = lambda d: d["outputs"][0].update(data=[1.0] * 6)  # noqa: E731
    elif case == "left_over":
        extra = b"\0" * 4
    elif case == "missing":
        mutate = lambda d: d["outputs"][0].update(shape=[3, 3], parameters={"binary_data_size": 36})  # noqa: E731
    elif case == "header_length_text":
        hl = "12a"
    elif case == "header_length_zero":
        hl = "0"
    elif case == "header_length_past_end":
        hl = "100000"
    elif case == "size_mismatch":
        mutate = lambda d: d["outputs"][0]["parameters"].update(binary_data_size=20)  # noqa: E731
    elif case == "fp64":
        mutate = lambda d: d["outputs"][0].update(datatype="FP64")  # noqa: E731
    elif case == "bad_shape":
        mutate = lambda d: d["outputs"][0].update(shape=[2, -3])  # noqa: E731
    elif case == "twice":
        outputs = [("output", a), ("output", a)]
    body, hl = _answer(outputs, extra=extra, header_length=hl, mutate=mutate)
    with pytest.raises(KasminaProtocolError, match=msg):
        decode_response(body, hl)


def test_decode_without_the_header_takes_a_json_answer_with_no_outputs():
    r = decode_response(bytearray(b'{"model_name":"m","outputs":[],"parameters":{"x":1}}'), None)
    assert r.outputs == {} and r.parameters == {"x": 1}
