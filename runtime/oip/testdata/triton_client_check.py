#!/usr/bin/python3
"""Drive a running Kasmina host with Triton's own Python HTTP client.

This is the one interoperability check that no one on the Kasmina side
wrote the client for: tritonclient.http from triton-inference-server/client,
unchanged. It is not in any package registry reachable here, so the check
runs only when TRITONCLIENT_SRC points at a checkout of that repository
(its src/python/library is put on sys.path); otherwise it prints a loud
SKIPPED line and exits 0.

Needs /usr/bin/python3 with Debian's python3-geventhttpclient,
python3-rapidjson and python3-numpy.

Usage:
  triton_client_check.py --url 127.0.0.1:PORT --model NAME \
      --input '[[1,2,3,4]]' --expected '[[2,4,6,8]]'
  triton_client_check.py --url 127.0.0.1:PORT --model NAME --case DIR
      (DIR holds io.safetensors with "input" and "expected", and case.json
       with "tolerance": the layout of the golden kernel cases)

--input/--expected take JSON or @FILE (a JSON file). The URL and token may
also come from KASMINA_URL and KASMINA_TOKEN. Exit status: 0 passed or
skipped, 1 a check failed, 2 bad arguments.
"""

import argparse
import json
import os
import struct
import sys


def skipped(why):
    bar = "=" * 72
    print(bar)
    print("SKIPPED: Triton client check did not run: " + why)
    print(bar)
    sys.exit(0)


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def load_json_arg(value):
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as fh:
            return json.load(fh)
    return json.loads(value)


def read_safetensors(path, np):
    """Return {name: ndarray} from a safetensors file (format: u64 LE header
    length, JSON header, raw little-endian data)."""
    dtypes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
    with open(path, "rb") as fh:
        blob = fh.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        arr = np.frombuffer(blob[base + begin : base + end], dtype=dtypes[spec["dtype"]])
        out[name] = arr.reshape(spec["shape"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("KASMINA_URL", ""), help="host:port of the daemon (no scheme)")
    p.add_argument("--token", default=os.environ.get("KASMINA_TOKEN", ""), help="bearer token, if the daemon needs one")
    p.add_argument("--model", required=True)
    p.add_argument("--input", help="input tensor as (nested) JSON, or @FILE")
    p.add_argument("--expected", help="expected output as (nested) JSON, or @FILE")
    p.add_argument("--case", help="a golden case directory (io.safetensors, case.json)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    args = p.parse_args()
    if not args.url:
        p.error("--url (or KASMINA_URL) is required")
    if args.url.startswith("http://") or args.url.startswith("https://"):
        p.error("--url takes host:port without a scheme")
    if not args.case and (args.input is None or args.expected is None):
        p.error("give --case, or both --input and --expected")

    src = os.environ.get("TRITONCLIENT_SRC", "")
    if not src:
        skipped("TRITONCLIENT_SRC is not set (point it at a checkout of triton-inference-server/client)")
    lib = os.path.join(src, "src", "python", "library")
    if not os.path.isdir(os.path.join(lib, "tritonclient")):
        skipped("TRITONCLIENT_SRC=%s has no src/python/library/tritonclient" % src)
    sys.path.insert(0, lib)
    try:
        import numpy as np
        import tritonclient.http as httpclient
    except ImportError as e:
        skipped("cannot import the client or its dependencies (%s); install python3-geventhttpclient python3-rapidjson python3-numpy" % e)

    tolerance = None
    if args.case:
        tensors = read_safetensors(os.path.join(args.case, "io.safetensors"), np)
        with open(os.path.join(args.case, "case.json"), encoding="utf-8") as fh:
            tolerance = float(json.load(fh)["tolerance"])
        x = tensors["input"].astype(np.float32)
        expected = tensors["expected"].astype(np.float64)
    else:
        x = np.array(load_json_arg(args.input), dtype=np.float32)
        expected = np.array(load_json_arg(args.expected), dtype=np.float64)

    def hdrs():
        # A fresh dict per call: the client's infer() writes
        # Inference-Header-Content-Length into the dict it is given, which
        # would leak into the next request.
        return {"Authorization": "Bearer " + args.token} if args.token else None

    client = httpclient.InferenceServerClient(url=args.url)
    checks = 0

    def check(cond, what):
        nonlocal checks
        if not cond:
            fail(what)
        checks += 1
        print("ok   " + what)

    check(client.is_server_live(headers=hdrs()), "is_server_live")
    check(client.is_server_ready(headers=hdrs()), "is_server_ready")
    meta = client.get_server_metadata(headers=hdrs())
    check("binary_tensor_data" in meta.get("extensions", []), "get_server_metadata lists binary_tensor_data: %s" % meta)
    check(client.is_model_ready(args.model, headers=hdrs()), "is_model_ready(%s)" % args.model)
    mmeta = client.get_model_metadata(args.model, headers=hdrs())
    inputs, outputs = mmeta.get("inputs", []), mmeta.get("outputs", [])
    check(
        len(inputs) == 1 and inputs[0]["name"] == "input" and inputs[0]["datatype"] == "FP32" and inputs[0]["shape"][0] == -1,
        "get_model_metadata input is input/FP32 with batch -1: %s" % inputs,
    )
    check(len(outputs) == 1 and outputs[0]["name"] == "output", "get_model_metadata output is named output: %s" % outputs)

    def compare(result, mode):
        out = result.as_numpy("output")
        check(out is not None, "%s: response has an output named output" % mode)
        check(out.dtype == np.float32, "%s: output dtype float32 (got %s)" % (mode, out.dtype))
        check(tuple(out.shape) == tuple(expected.shape), "%s: output shape %s == expected %s" % (mode, out.shape, expected.shape))
        if tolerance is not None:
            check(not np.isnan(out).any(), "%s: no NaN in output" % mode)
            err = np.linalg.norm(out.astype(np.float64) - expected) / max(np.linalg.norm(expected), 1e-300)
            check(err <= tolerance, "%s: relative L2 error %.3g <= tolerance %.3g" % (mode, err, tolerance))
        else:
            check(
                np.allclose(out, expected, rtol=args.rtol, atol=args.atol),
                "%s: output matches expected within rtol=%g atol=%g\n got %s\n want %s" % (mode, args.rtol, args.atol, out, expected),
            )
        params = result.get_response().get("parameters", {})
        check("executed_on" in params, "%s: response parameters say where it ran: %s" % (mode, params))

    # The client's defaults: binary input, no outputs listed, so the request
    # asks binary_data_output for all outputs.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    compare(client.infer(args.model, [inp], headers=hdrs(), request_id="kasmina-check-1"), "infer(binary)")

    # Everything in JSON.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    out = httpclient.InferRequestedOutput("output", binary_data=False)
    res = client.infer(args.model, [inp], outputs=[out], headers=hdrs(), request_id="kasmina-check-2")
    check(res.get_response().get("id") == "kasmina-check-2", "infer(JSON) echoes the request id")
    check("data" in res.get_output("output"), "infer(JSON) answers with data in JSON")
    compare(res, "infer(binary_data=False)")

    # A model that does not exist is an error the client raises, not a crash.
    try:
        client.infer("kasmina-no-such-model", [inp], headers=hdrs())
        fail("infer on an unknown model did not raise")
    except httpclient.InferenceServerException as e:
        check(str(e.status()) == "404", "unknown model raises with status 404 (%s)" % e.message())

    client.close()
    print("PASSED: %d checks with tritonclient.http against %s, model %s" % (checks, args.url, args.model))


if __name__ == "__main__":
    main()
