#!/usr/bin/env python3
"""Builds bench/run.sh's results block (Markdown) from the raw logs in DIR:
one table of ratios with the target beside each, then the machine and the
detailed tables. Usage: summary.py DIR"""
import json
import os
import re
import sys

d = sys.argv[1]
rows = []  # (comparison, measured, ratio, target, verdict)


def read(name):
    try:
        return open(os.path.join(d, name)).read()
    except OSError:
        return ""


def verdict(ok):
    return "meets" if ok else "**misses**"


def add(comp, measured, ratio, target, ok):
    rows.append((comp, measured, ratio, target, verdict(ok) if ok is not None else "—"))


# contracts vs Pydantic
for m in re.finditer(r"^Benchmark(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)x", read("contracts.txt"), re.M):
    name, go, py, r = m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4))
    add(f"contracts {name} vs Pydantic v2", f"{go:.0f} ns vs {py:.0f} ns", f"{r:.1f}x faster", "≥ 3x", r >= 3)
if not re.search(r"^Benchmark", read("contracts.txt"), re.M):
    add("contracts vs Pydantic v2", "skipped (see log)", "—", "≥ 3x", None)

# CPU executor vs PyTorch
kern = {}
for m in re.finditer(r"^(\w+)\s+(default|openblas)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", read("kernels.txt"), re.M):
    kern[(m.group(1), m.group(2))] = dict(go_ns=float(m.group(3)), torch_ns=float(m.group(4)), lat=float(m.group(5)),
                                         go_gf=float(m.group(6)), torch_gf=float(m.group(7)), gf=float(m.group(8)))
for build in ("default", "openblas"):
    k = kern.get(("SeedLinear64ReLUBatch1", build))
    if k:
        add(f"seed kernel Linear(64→64)+ReLU b1, {build} build vs PyTorch", f"{k['go_ns']/1000:.2f} µs vs {k['torch_ns']/1000:.2f} µs",
            f"{k['lat']:.1f}x lower latency", "≥ 5x", k["lat"] >= 5)
for build, target in (("openblas", 0.9), ("default", 0.7)):
    k = kern.get(("Linear512ReLUBatch32", build))
    if k:
        add(f"large kernel Linear(512→512)+ReLU b32, {build} build vs PyTorch", f"{k['go_gf']:.1f} vs {k['torch_gf']:.1f} GFLOP/s",
            f"{k['gf']:.2f}x GFLOP/s", f"≥ {target}x" + (" (issue 4)" if build == "openblas" else " (issue 9)"), k["gf"] >= target)
if not kern:
    add("CPU executor vs PyTorch", "skipped (see log)", "—", "≥ 5x / ≥ 0.9x", None)

# SGEMM
gemm = read("gemm.txt")
peak = re.search(r"FMA peak \(float32\): ([\d.]+) GFLOP/s per core, ([\d.]+) GFLOP/s all cores", gemm)
hdr = re.search(r"^shape\s+(.*)$", gemm, re.M)
if hdr:
    cols = re.findall(r"(\S+) GF/s|(\S+/torch)|(\S+ %peak)", hdr.group(1))
    cols = [a or b or c for a, b, c in cols]
    for m in re.finditer(r"^(linear\w+|matmul\w+)\s+(.*)$", gemm, re.M):
        toks = re.findall(r"[\d.]+ \([\d.]+us\)|(?<!\S)-(?!\S)|[\d.]+x|\d+%", m.group(2))
        vals = dict(zip(cols, toks))
        shape = m.group(1)
        fast = next((c for c in cols if c in ("avx512", "avx2", "portable")), None)
        if not fast or shape == "linear64x64_b1":
            continue
        gf = lambda c: float(vals[c].split()[0]) if c in vals and vals[c] != "-" else None
        r = vals.get(fast + "/torch")
        pk = vals.get(fast + " %peak", "?")
        ob = vals.get("openblas/torch")
        if r:
            add(f"SGEMM {shape}: default ({fast}) vs PyTorch", f"{gf(fast)} vs {gf('torch')} GFLOP/s; {pk} of FMA peak",
                r + " GFLOP/s", "≥ 0.7x (issue 9)" if shape.startswith("linear") else "report", float(r[:-1]) >= 0.7 if shape.startswith("linear") else None)
        if ob:
            add(f"SGEMM {shape}: openblas build vs PyTorch", f"{gf('openblas')} vs {gf('torch')} GFLOP/s", ob + " GFLOP/s", "report", None)
else:
    add("SGEMM vs OpenBLAS vs PyTorch", "skipped (see log)", "—", "≥ 0.7x", None)

# placement
pl = [float(x) for x in re.findall(r"([\d.e+]+) decisions/s", read("placement.txt"))]
if pl:
    best = max(pl)
    add("placement decisions per second, 8-GPU snapshot, one core", f"{best/1e6:.2f} M/s", "—", "> 1 M/s", best > 1e6)

# dispatch overhead
disp = read("dispatch.txt")
def best_ns(name):
    v = [float(x) for x in re.findall(r"BenchmarkDispatchOverhead/" + re.escape(name) + r"-?\d*\s+\d+\s+([\d.]+) ns/op", disp)]
    return min(v) if v else None
kr, hi = best_ns("kernel.Run"), best_ns("Host.Infer")
if kr and hi:
    add("dispatch overhead per call (Host.Infer − kernel.Run)", f"{hi:.0f} − {kr:.0f} ns", f"{(hi-kr)/1000:.2f} µs", "< 2 µs", hi - kr < 2000)

# bus
oo = read("oona.txt")
rb = re.search(r"redis-benchmark XADD.*?:\s+([\d.]+) entries/s", oo)
gp = re.search(r"publisher, health signal \(runtime\)\s*:\s+([\d.]+) signals/s", oo)
if rb and gp:
    r = float(gp.group(1)) / float(rb.group(1))
    add("bus publisher vs redis-benchmark XADD (-c 1 -P 256)", f"{float(gp.group(1)):,.0f} vs {float(rb.group(1)):,.0f} msg/s", f"{100*r:.0f} %", "≥ 60 %", r >= 0.6)
else:
    add("bus publisher vs redis-benchmark", "skipped (see log)", "—", "≥ 60 %", None)

# HTTP
def js(name):
    try:
        return json.loads(read(name))
    except ValueError:
        return None
w1, w32, inproc = js("http/wrk-c1.json"), js("http/wrk-c32.json"), js("http/inproc.json")
if w1 and inproc:
    over = w1["p50_us"] - inproc["p50_us"]
    add("HTTP /infer Linear(64→64) b1 JSON, 1 connection (wrk) vs in-process call",
        f"p50 {w1['p50_us']} µs, p99 {w1['p99_us']} µs vs {inproc['p50_us']:.1f} µs in-process",
        f"{over:.0f} µs HTTP overhead (p50)", "report", None)
if w32:
    errs = w32["connect_errors"] + w32["read_errors"] + w32["write_errors"] + w32["timeouts"]
    add("HTTP /infer, 32 connections (wrk)", f"{w32['rps']:,.0f} req/s, p50 {w32['p50_us']/1000:.2f} ms, p99 {w32['p99_us']/1000:.2f} ms",
        f"{w32['status_5xx']} 5xx, {errs} socket errors", "0 5xx", w32["status_5xx"] == 0 and errs == 0)
if not (w1 or w32):
    add("HTTP /infer under wrk", "skipped (see log)", "—", "report", None)

# sweep
sw = read("sweep.txt")
sweep = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", sw, re.M)

machine = read("machine.txt").strip()
print("Machine and command:\n\n```\n" + machine + "\n```\n")
print("| comparison | measured | ratio | target | |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
if not sweep:
    print("Latency against batch size: not measured in this run (see the sweep log).\n")
else:
    print("Latency against batch size, Linear(512→512)+ReLU (default build vs PyTorch, same weights and inputs, "
          "p50 of `kasmina-host run --repeat` and of a timed PyTorch loop); plot: `bench/plot/latency_vs_batch.png`\n")
    print("| batch | host p50 µs | host p99 µs | PyTorch p50 µs | PyTorch p99 µs | PyTorch / host |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in sweep:
        print(f"| {b[0]} | {b[1]} | {b[2]} | {b[3]} | {b[4]} | {b[5]}x |")
    print()
    print("![latency against batch size](plot/latency_vs_batch.png)\n")
for name, title in (("contracts.txt", "contracts vs Pydantic"), ("kernels.txt", "CPU executor vs PyTorch"), ("gemm.txt", "SGEMM")):
    noise = re.compile(r"^(Benchmark\S+-\d+\s|goos:|goarch:|pkg:|cpu:|PASS|ok\s)")
    text = "\n".join(l for l in read(name).splitlines() if not noise.match(l))
    if text.strip():
        print(f"<details><summary>{title}: raw table</summary>\n\n```\n{text.strip()}\n```\n</details>\n")
