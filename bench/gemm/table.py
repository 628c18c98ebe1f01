#!/usr/bin/python3
"""Builds the ratio table from go test -bench outputs and torch_bench.py's
output. Usage: table.py DEFAULT.txt OPENBLAS.txt TORCH.txt

Every input holds several samples per shape; a cell gives the fastest
sample (GFLOP/s and its µs per call), the ratio columns divide fastest by
fastest, and the columns at the right divide median by median."""
import re
import statistics
import sys

SHAPES = ["linear64x64_b1", "linear512x512_b32", "linear1024x1024_b256", "matmul2048"]


def summarize(samples):
    """{key: [(gflops, us)]} -> {key: (best gflops, its us, median gflops)}."""
    out = {}
    for key, v in samples.items():
        g, us = max(v)
        out[key] = (g, us, statistics.median(x[0] for x in v))
    return out


def parse_go(path):
    """Returns ({(impl, shape): (gflops, us, median gflops)}, {threads: peak})."""
    res, peak = {}, {}
    if not path:
        return res, peak
    try:
        text = open(path).read()
    except OSError:
        return res, peak
    for line in text.splitlines():
        m = re.match(r"BenchmarkShapes/impl=(\w+)/(\w+)-\d+\s+\d+\s+[\d.]+ ns/op\s+([\d.]+) GFLOP/s\s+([\d.]+) us/call", line)
        if m:
            res.setdefault((m.group(1), m.group(2)), []).append((float(m.group(3)), float(m.group(4))))
        m = re.match(r"BenchmarkFMAPeak/threads=(\d+)-\d+\s+\d+\s+[\d.]+ ns/op\s+([\d.]+) GFLOP/s", line)
        if m:
            peak[int(m.group(1))] = max(peak.get(int(m.group(1)), 0), float(m.group(2)))
    return summarize(res), peak


def parse_torch(path):
    res = {}
    try:
        for line in open(path):
            f = line.split()
            if len(f) == 3 and not line.startswith("#"):
                res.setdefault(f[0], []).append((float(f[1]), float(f[2])))
    except OSError:
        pass
    return summarize(res)


def main():
    dflt, peak = parse_go(sys.argv[1])
    blas, _ = parse_go(sys.argv[2] if len(sys.argv) > 2 else "")
    torch = parse_torch(sys.argv[3]) if len(sys.argv) > 3 else {}
    allpeak = max(peak.values()) if peak else 0
    print(f"FMA peak (float32): {peak.get(1, 0):.1f} GFLOP/s per core, {allpeak:.1f} GFLOP/s all cores")
    order = ["avx512", "avx2", "portable"]
    impls = sorted({i for i, _ in dflt}, key=lambda s: order.index(s) if s in order else 9)
    cols = impls + (["openblas"] if blas else []) + (["torch"] if torch else [])
    hdr = f"{'shape':22}" + "".join(f" {c + ' GF/s':>18}" for c in cols)
    fast = impls[0] if impls else None
    if torch and fast:
        hdr += f"{fast + '/torch':>14}"
        if blas:
            hdr += f"{'openblas/torch':>16}"
    hdr += f"{fast + ' %peak':>13}" if fast else ""
    if torch and fast:
        hdr += f"{'median:' + fast:>15}"
        if blas:
            hdr += f"{'median:openblas':>16}"
    print(hdr)

    def get(c, s):
        return torch.get(s) if c == "torch" else (blas.get(("openblas", s)) if c == "openblas" else dflt.get((c, s)))

    for s in SHAPES:
        row = f"{s:22}"
        for c in cols:
            v = get(c, s)
            # a leading space: a cell wider than the column stays apart
            row += f" {(f'{v[0]:.1f} ({v[1]:.0f}us)' if v[1] >= 10 else f'{v[0]:.1f} ({v[1]:.2f}us)') if v else '-':>18}"
        t = torch.get(s)
        if torch and fast:
            g = dflt.get((fast, s))
            row += f"{(f'{g[0] / t[0]:.2f}x') if t and g else '-':>14}"
            if blas:
                o = blas.get(("openblas", s))
                row += f"{(f'{o[0] / t[0]:.2f}x') if t and o else '-':>16}"
        if fast:
            g = dflt.get((fast, s))
            row += f"{(f'{100 * g[0] / allpeak:.0f}%') if g and allpeak else '-':>13}"
        if torch and fast:
            for c in [fast] + (["openblas"] if blas else []):
                v = get(c, s)
                row += f"{(f'{v[2] / t[2]:.2f}x') if t and v else '-':>{15 if c == fast else 16}}"
        print(row)
    print("cells: fastest sample; X/torch: fastest over fastest; median:X: median sample over PyTorch's median sample")


if __name__ == "__main__":
    main()
