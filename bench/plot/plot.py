#!/usr/bin/python3
"""Draws latency against batch size for the host and PyTorch from the JSON
lines sweep.sh wrote. Usage: plot.py HOST.jsonl TORCH.jsonl OUT.png TITLE"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    rows.sort(key=lambda r: r["batch"])
    return [r["batch"] for r in rows], [r["p50_us"] for r in rows], [r["p99_us"] for r in rows]


hb, h50, h99 = load(sys.argv[1])
tb, t50, t99 = load(sys.argv[2])
fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
ax.plot(hb, h50, "o-", color="tab:blue", label="kasmina-host (default build) p50")
ax.fill_between(hb, h50, h99, color="tab:blue", alpha=0.15, label="kasmina-host p50–p99")
ax.plot(tb, t50, "s-", color="tab:orange", label="PyTorch CPU p50")
ax.fill_between(tb, t50, t99, color="tab:orange", alpha=0.15, label="PyTorch p50–p99")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("batch size")
ax.set_ylabel("latency per call (µs)")
ax.set_title(sys.argv[4], fontsize=10)
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[3])
