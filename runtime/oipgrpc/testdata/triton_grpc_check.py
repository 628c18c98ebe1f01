#!/usr/bin/python3
"""Drive a running Kasmina host with Triton's own Python gRPC client.

tritonclient.grpc from triton-inference-server/client, unchanged: no one on
the Kasmina side wrote it. It is in no package registry reachable here, so
the check runs only when TRITONCLIENT_SRC points at a checkout of that
repository; otherwise it prints a loud SKIPPED banner and exits 0.

The client package ships without its protobuf modules (Triton's build
generates them); this script generates them into a temporary copy of the
package with grpc_tools, from Triton's grpc_service.proto, model_config.proto
and health.proto found under TRITONCLIENT_SRC, and fixes their imports as
Triton's build_wheel.py does. Nothing is written into the checkout.

Checks, for each model: is_server_live, is_server_ready, get_server_metadata
(extensions), is_model_ready, get_model_metadata, infer (raw_input_contents
in, raw_output_contents out) compared with the expected output; the
grpc.health.v1 service through Triton's health.proto; with --shm, the same
inference through system shared memory (tritonclient.utils.shared_memory)
with the gRPC client and, given --http-url, with the HTTP client too.

Needs /usr/bin/python3 with python3-grpcio, python3-protobuf,
python3-grpc-tools, python3-numpy, python3-rapidjson (and
python3-geventhttpclient for --http-url).

Usage:
  triton_grpc_check.py --url 127.0.0.1:GRPC_PORT --model NAME \\
      --input '[[1,2,3,4]]' --expected '[[2,4,6,8]]' [--shm] [--http-url HOST:PORT]
  triton_grpc_check.py --url 127.0.0.1:GRPC_PORT --golden DIR [--shm] [--http-url ...]
      (every case directory of DIR: io.safetensors with "input" and
       "expected", case.json with "kernel_id" and "tolerance")

Exit status: 0 passed or skipped, 1 a check failed, 2 bad arguments.
"""

import argparse
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile


def skipped(why):
    bar = "=" * 72
    print(bar)
    print("SKIPPED: Triton gRPC client check did not run: " + why)
    print(bar)
    sys.exit(0)


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def read_safetensors(path, np):
    """{name: ndarray} from a safetensors file (u64 LE header length, JSON
    header, raw little-endian data)."""
    dtypes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
    with open(path, "rb") as fh:
        blob = fh.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        arr = np.frombuffer(blob[8 + n + begin : 8 + n + end], dtype=dtypes[spec["dtype"]])
        out[name] = arr.reshape(spec["shape"])
    return out


def find_proto(src, name):
    """The first file called name under src (Triton keeps copies of its
    protos in the client repository)."""
    hits = sorted(glob.glob(os.path.join(src, "**", name), recursive=True))
    return hits[0] if hits else None


def sed(pattern, repl, path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(re.sub(pattern, repl, text, flags=re.M))


def prepare_client(src, work):
    """Copy tritonclient into work, generate its protobuf modules there, and
    build the old C shared memory shim if this checkout still has one."""
    lib = os.path.join(src, "src", "python", "library", "tritonclient")
    if not os.path.isdir(lib):
        skipped("TRITONCLIENT_SRC=%s has no src/python/library/tritonclient" % src)
    pkg = os.path.join(work, "tritonclient")
    shutil.copytree(lib, pkg)
    protos = {n: find_proto(src, n) for n in ("grpc_service.proto", "model_config.proto", "health.proto")}
    missing = [n for n, p in protos.items() if p is None]
    if missing:
        skipped("no %s under TRITONCLIENT_SRC=%s" % (", ".join(missing), src))
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    for name, path in protos.items():
        shutil.copy(path, os.path.join(gen, name))
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        skipped("grpc_tools is missing (apt-get install python3-grpc-tools)")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", gen, "--python_out=" + gen, "--grpc_python_out=" + gen,
           "grpc_service.proto", "model_config.proto", "health.proto"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        fail("grpc_tools.protoc: %s" % res.stderr)
    grpc_dir = os.path.join(pkg, "grpc")
    shutil.copy(os.path.join(gen, "model_config_pb2.py"), os.path.join(grpc_dir, "model_config_pb2.py"))
    shutil.copy(os.path.join(gen, "grpc_service_pb2.py"), os.path.join(grpc_dir, "service_pb2.py"))
    shutil.copy(os.path.join(gen, "grpc_service_pb2_grpc.py"), os.path.join(grpc_dir, "service_pb2_grpc.py"))
    # As Triton's build_wheel.py: package-qualified imports.
    for f in ("model_config_pb2.py", "service_pb2.py"):
        sed(r"^import ([^ ]*)_pb2 as ([^ ]*)$", r"from tritonclient.grpc import \1_pb2 as \2", os.path.join(grpc_dir, f))
    sed(r"^import grpc_([^ ]*)_pb2 as ([^ ]*)$", r"from tritonclient.grpc import \1_pb2 as \2", os.path.join(grpc_dir, "service_pb2_grpc.py"))
    # Older clients load a small C library for system shared memory.
    shim = os.path.join(pkg, "utils", "shared_memory", "shared_memory.cc")
    if os.path.exists(shim):
        out = os.path.join(pkg, "utils", "shared_memory", "libcshm.so")
        res = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", out, shim, "-lrt"], capture_output=True, text=True)
        if res.returncode != 0:
            fail("building the client's shared memory library: %s" % res.stderr)
        print("built the client's C shared memory library with gcc")
    else:
        print("this client's tritonclient.utils.shared_memory is pure Python (no C library to build)")
    sys.path.insert(0, gen)  # health_pb2 for the health check
    sys.path.insert(0, work)


def load_cases(args, np):
    if args.golden:
        cases = []
        for d in sorted(os.listdir(args.golden)):
            cdir = os.path.join(args.golden, d)
            if not os.path.isfile(os.path.join(cdir, "case.json")):
                continue
            with open(os.path.join(cdir, "case.json"), encoding="utf-8") as fh:
                meta = json.load(fh)
            t = read_safetensors(os.path.join(cdir, "io.safetensors"), np)
            cases.append((meta["kernel_id"], t["input"].astype(np.float32), t["expected"].astype(np.float64), float(meta["tolerance"])))
        if not cases:
            fail("no cases in %s" % args.golden)
        return cases
    x = np.array(json.loads(args.input), dtype=np.float32)
    return [(args.model, x, np.array(json.loads(args.expected), dtype=np.float64), None)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="host:port of the daemon's gRPC listener")
    p.add_argument("--http-url", default="", help="host:port of its HTTP listener, for the HTTP client's shared memory check")
    p.add_argument("--token", default="", help="bearer token, if the daemon needs one")
    p.add_argument("--model")
    p.add_argument("--input")
    p.add_argument("--expected")
    p.add_argument("--golden", help="a directory of golden case directories")
    p.add_argument("--shm", action="store_true", help="also infer through system shared memory")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    args = p.parse_args()
    if not args.golden and not (args.model and args.input and args.expected):
        p.error("give --golden, or --model, --input and --expected")

    src = os.environ.get("TRITONCLIENT_SRC", "")
    if not src:
        skipped("TRITONCLIENT_SRC is not set (point it at a checkout of triton-inference-server/client)")
    work = tempfile.mkdtemp(prefix="tritonclient-")
    try:
        prepare_client(src, work)
        run(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args):
    try:
        import grpc
        import numpy as np
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm
        import health_pb2
        import health_pb2_grpc
    except ImportError as e:
        skipped("cannot import the client or its dependencies (%s); install python3-grpcio python3-protobuf python3-rapidjson python3-numpy" % e)
    httpclient = None
    if args.http_url:
        try:
            import tritonclient.http as httpclient
        except ImportError as e:
            skipped("cannot import tritonclient.http (%s); install python3-geventhttpclient" % e)

    headers = {"authorization": "Bearer " + args.token} if args.token else None
    client = grpcclient.InferenceServerClient(url=args.url)
    checks = 0

    def check(cond, what):
        nonlocal checks
        if not cond:
            fail(what)
        checks += 1
        print("ok   " + what)

    def compare(out, expected, tolerance, what):
        check(out is not None, "%s: an output named output" % what)
        check(out.dtype == np.float32, "%s: float32 output (got %s)" % (what, out.dtype))
        check(tuple(out.shape) == tuple(expected.shape), "%s: output shape %s == %s" % (what, out.shape, expected.shape))
        if tolerance is None:
            check(np.allclose(out, expected, rtol=args.rtol, atol=args.atol), "%s: output %s == %s" % (what, out, expected))
            return
        check(not np.isnan(out).any(), "%s: no NaN" % what)
        err = np.linalg.norm(out.astype(np.float64) - expected) / max(np.linalg.norm(expected), 1e-300)
        check(err <= tolerance, "%s: relative L2 error %.3g <= tolerance %.3g" % (what, err, tolerance))

    check(client.is_server_live(headers=headers), "is_server_live")
    check(client.is_server_ready(headers=headers), "is_server_ready")
    meta = client.get_server_metadata(headers=headers, as_json=True)
    check("system_shared_memory" in meta.get("extensions", []), "get_server_metadata lists system_shared_memory: %s" % meta)

    # grpc.health.v1, as a Kubernetes gRPC probe asks it.
    with grpc.insecure_channel(args.url) as ch:
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        check(st.status == health_pb2.HealthCheckResponse.SERVING, "grpc.health.v1 Check(\"\") is SERVING")

    cases = load_cases(args, np)
    for model, x, expected, tolerance in cases:
        check(client.is_model_ready(model, headers=headers), "is_model_ready(%s)" % model)
        mm = client.get_model_metadata(model, headers=headers, as_json=True)
        ins, outs = mm.get("inputs", []), mm.get("outputs", [])
        check(len(ins) == 1 and ins[0]["name"] == "input" and ins[0]["datatype"] == "FP32" and ins[0]["shape"][0] == "-1",
              "%s: metadata input is input/FP32 with batch -1: %s" % (model, ins))
        check(len(outs) == 1 and outs[0]["name"] == "output", "%s: metadata output is named output" % model)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("output")], headers=headers, request_id="kasmina-grpc")
        check(len(res.get_response().raw_output_contents) == 1, "%s: the output in raw_output_contents" % model)
        check(res.get_response().id == "kasmina-grpc", "%s: the request id echoed" % model)
        compare(res.as_numpy("output"), expected, tolerance, "%s infer" % model)

    try:
        client.infer("kasmina-no-such-model", [inp], headers=headers)
        fail("infer on an unknown model did not raise")
    except grpcclient.InferenceServerException as e:
        check(e.status() == "StatusCode.NOT_FOUND", "an unknown model raises NOT_FOUND (%s)" % e.status())

    if args.shm:
        shm_checks(args, np, grpcclient, httpclient, shm, client, headers, cases, compare, check)

    client.close()
    print("PASSED: %d checks with tritonclient.grpc%s against %s, %d model(s)" % (
        checks, " and shared memory" if args.shm else "", args.url, len(cases)))


def shm_checks(args, np, grpcclient, httpclient, shm, client, headers, cases, compare, check):
    """Inputs and outputs through system shared memory, as Triton's
    documentation shows it: create, register, infer, read, unregister."""
    tag = "%d" % os.getpid()
    clients = [("grpc", client, grpcclient, headers)]
    if httpclient is not None:
        hc = httpclient.InferenceServerClient(url=args.http_url)
        clients.append(("http", hc, httpclient, {"Authorization": "Bearer " + args.token} if args.token else None))
    for proto, c, mod, hdrs in clients:
        c.unregister_system_shared_memory(headers=hdrs)
        for model, x, expected, tolerance in cases[:: max(1, len(cases) // 8)]:
            in_bytes, out_bytes = x.nbytes, expected.size * 4
            ih = shm.create_shared_memory_region("kin", "/kasmina_in_" + tag, in_bytes)
            oh = shm.create_shared_memory_region("kout", "/kasmina_out_" + tag, out_bytes)
            try:
                shm.set_shared_memory_region(ih, [x])
                c.register_system_shared_memory("kin", "/kasmina_in_" + tag, in_bytes, headers=hdrs)
                c.register_system_shared_memory("kout", "/kasmina_out_" + tag, out_bytes, headers=hdrs)
                status = c.get_system_shared_memory_status(headers=hdrs)
                names = sorted(r["name"] for r in status) if proto == "http" else sorted(status.regions.keys())
                check(names == ["kin", "kout"], "%s: system shared memory status lists both regions: %s" % (proto, names))
                inp = mod.InferInput("input", list(x.shape), "FP32")
                inp.set_shared_memory("kin", in_bytes)
                out = mod.InferRequestedOutput("output")
                out.set_shared_memory("kout", out_bytes)
                res = c.infer(model, [inp], outputs=[out], headers=hdrs)
                o = res.get_output("output")
                shape = list(o["shape"]) if proto == "http" else list(o.shape)
                check(shape == list(expected.shape), "%s %s: output shape in the answer %s" % (proto, model, shape))
                got = shm.get_contents_as_numpy(oh, np.float32, shape)
                compare(got, expected, tolerance, "%s %s via shared memory" % (proto, model))
                c.unregister_system_shared_memory("kin", headers=hdrs)
                c.unregister_system_shared_memory("kout", headers=hdrs)
                status = c.get_system_shared_memory_status(headers=hdrs)
                left = len(status) if proto == "http" else len(status.regions)
                check(left == 0, "%s: no region left after unregistering" % proto)
            finally:
                shm.destroy_shared_memory_region(ih)
                shm.destroy_shared_memory_region(oh)
        if proto == "http":
            c.close()


if __name__ == "__main__":
    main()
