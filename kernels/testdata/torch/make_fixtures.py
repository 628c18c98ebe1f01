"""Writes the PyTorch files the kernel loader must recognise and refuse.

    /usr/bin/python3 kernels/testdata/torch/make_fixtures.py OUTDIR

OUTDIR receives, for one small torch.nn.Sequential (Linear 3->2, ReLU):

    sequential_zip.pt     torch.save (zip container, PyTorch's default)
    sequential_legacy.pt  torch.save(..., _use_new_zipfile_serialization=False)
    sequential_script.pt  torch.jit.script(...).save (TorchScript)

The copies next to this script were written by it with PyTorch 1.13; the
Go test (TestParseRefusesPyTorchFiles) also runs it into a temporary
folder when PyTorch is importable, so that files from the installed
PyTorch are checked too.
"""
import os
import sys

import torch


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()).eval()
    torch.save(model, os.path.join(out, "sequential_zip.pt"))
    torch.save(model, os.path.join(out, "sequential_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.jit.script(model).save(os.path.join(out, "sequential_script.pt"))


if __name__ == "__main__":
    main()
