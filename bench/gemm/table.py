#!/usr/bin/python3
"""Builds the ratio table from go test -bench outputs and torch_bench.py's
output. Usage: table.py DEFAULT.txt OPENBLAS.txt TORCH.txt"""
import re
import sys

SHAPES = ["linear64x64_b1", "linear512x512_b32", "linear1024x1024_b256", "matmul2048"]


def parse_go(path):
    """Returns ({(impl, shape): (gflops, us)}, {threads: peak})."""
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
            key = (m.group(1), m.group(2))
            g, us = float(m.group(3)), float(m.group(4))
            if key not in res or g > res[key][0]:
                res[key] = (g, us)
        m = re.match(r"BenchmarkFMAPeak/threads=(\d+)-\d+\s+\d+\s+[\d.]+ ns/op\s+([\d.]+) GFLOP/s", line)
        if m:
            peak[int(m.group(1))] = max(peak.get(int(m.group(1)), 0), float(m.group(2)))
    return res, peak


def main():
    dflt, peak = parse_go(sys.argv[1])
    blas, _ = parse_go(sys.argv[2] if len(sys.argv) > 2 else "")
    torch = {}
    if len(sys.argv) > 3:
        try:
            for line in open(sys.argv[3]):
                f = line.split()
                if len(f) == 3:
                    torch[f[0]] = (float(f[1]), float(f[2]))
        except OSError:
            pass
    allpeak = max(peak.values()) if peak else 0
    print(f"FMA peak (float32): {peak.get(1, 0):.1f} GFLOP/s per core, {allpeak:.1f} GFLOP/s all cores")
    impls = sorted({i for i, _ in dflt}, key=lambda s: ["avx512", "avx2", "portable"].index(s) if s in ["avx512", "avx2", "portable"] else 9)
    cols = impls + (["openblas"] if blas else []) + (["torch"] if torch else [])
    hdr = f"{'shape':22}" + "".join(f"{c + ' GF/s':>16}" for c in cols)
    fast = impls[0] if impls else None
    if torch and fast:
        hdr += f"{fast + '/torch':>14}"
        if blas:
            hdr += f"{'openblas/torch':>16}"
    hdr += f"{fast + ' %peak':>13}" if fast else ""
    print(hdr)
    for s in SHAPES:
        row = f"{s:22}"
        for c in cols:
            v = torch.get(s) if c == "torch" else (blas.get(("openblas", s)) if c == "openblas" else dflt.get((c, s)))
            row += f"{(f'{v[0]:.1f} ({v[1]:.0f}us)' if v[1] >= 10 else f'{v[0]:.1f} ({v[1]:.2f}us)') if v else '-':>16}"
        if torch and fast:
            t, g = torch.get(s), dflt.get((fast, s))
            row += f"{(f'{g[0] / t[0]:.2f}x') if t and g else '-':>14}"
            if blas:
                o = blas.get(("openblas", s))
                row += f"{(f'{o[0] / t[0]:.2f}x') if t and o else '-':>16}"
        if fast:
            g = dflt.get((fast, s))
            row += f"{(f'{100 * g[0] / allpeak:.0f}%') if g and allpeak else '-':>13}"
        print(row)


if __name__ == "__main__":
    main()
