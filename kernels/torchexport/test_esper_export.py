"""Unit checks of esper_export: refusal by name, the reference kernels' exact
byte layout, and the CompiledKernel sidecar.

Run: /usr/bin/python3 -m unittest -v test_esper_export   (in this folder)
"""

import hashlib
import json
import os
import struct
import tempfile
import unittest

import torch
from torch import nn

import esper_export as ee

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "testdata", "golden")


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class RefusesUnsupported(unittest.TestCase):
    def assertRefused(self, model, type_name, path):
        with self.assertRaises(ee.UnsupportedModuleError) as cm:
            ee.export_bytes(model, [8])
        msg = str(cm.exception)
        self.assertIn(f"unsupported module {type_name!r} at {path!r}", msg)
        self.assertEqual(cm.exception.type_name, type_name)
        self.assertEqual(cm.exception.path, path)

    def test_lstm_named_with_its_position(self):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.LSTM(8, 8))
        self.assertRefused(model, "LSTM", "3")
        with self.assertRaisesRegex(ee.UnsupportedModuleError, r"^unsupported module 'LSTM' at '3'$"):
            ee.module_graph(model)

    def test_nested_position(self):
        model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 1)))
        self.assertRefused(model, "Conv1d", "1.1")

    def test_other_modules(self):
        for mod in [nn.MaxPool2d(2), nn.Dropout2d(0.1), nn.Softmax(dim=1), nn.LeakyReLU(), nn.Embedding(4, 4)]:
            with self.subTest(mod=type(mod).__name__):
                self.assertRefused(nn.Sequential(nn.Linear(8, 8), mod), type(mod).__name__, "1")

    def test_subclass_refused_by_its_own_name(self):
        self.assertRefused(nn.Sequential(MyLinear(8, 8)), "MyLinear", "0")

    def test_root_must_be_sequential(self):
        with self.assertRaisesRegex(ee.UnsupportedModuleError, "unsupported module 'Linear' at '<root>'"):
            ee.export_bytes(nn.Linear(8, 8), [8])

    def test_settings_the_format_cannot_express(self):
        cases = [
            (nn.Sequential(nn.BatchNorm1d(8, track_running_stats=False)), "BatchNorm1d", "track_running_stats"),
            (nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), "Conv2d", "padding_mode"),
            (nn.Sequential(nn.Conv2d(1, 1, 2, padding="same")), "Conv2d", "asymmetric"),
            (nn.Sequential(nn.AdaptiveAvgPool2d((None, 2))), "AdaptiveAvgPool2d", "None"),
        ]
        for model, name, detail in cases:
            with self.subTest(name=name, detail=detail):
                with self.assertRaises(ee.UnsupportedModuleError) as cm:
                    ee.module_graph(model)
                self.assertIn(f"unsupported module {name!r} at '0'", str(cm.exception))
                self.assertIn(detail, str(cm.exception))

    def test_cli_exit_status_and_message(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "badmodel.py"), "w") as f:
                f.write("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GRU(4, 4))\n")
            import subprocess, sys
            r = subprocess.run([sys.executable, os.path.join(HERE, "esper_export.py"), "export", "--model", "badmodel:make",
                                "--input-shape", "4", "--out", os.path.join(d, "k.safetensors")],
                               cwd=d, env=dict(os.environ, PYTHONPATH=d), capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("unsupported module 'GRU' at '1'", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "k.safetensors")))


def build(graph):
    """A torch.nn.Sequential from an esper.module graph (test helper)."""
    layers = []
    for l in graph["layers"]:
        t = l["type"]
        if t == "sequential":
            layers.append(build(l))
        elif t == "linear":
            layers.append(nn.Linear(l["in_features"], l["out_features"], bias=l["bias"]))
        elif t == "conv2d":
            layers.append(nn.Conv2d(l["in_channels"], l["out_channels"], tuple(l["kernel_size"]), tuple(l["stride"]),
                                    tuple(l["padding"]), tuple(l["dilation"]), l["groups"], l["bias"]))
        elif t in ("batchnorm1d", "batchnorm2d"):
            cls = nn.BatchNorm1d if t == "batchnorm1d" else nn.BatchNorm2d
            layers.append(cls(l["num_features"], eps=l["eps"], affine=l["affine"]))
        elif t == "layernorm":
            layers.append(nn.LayerNorm(l["normalized_shape"], eps=l["eps"], elementwise_affine=l["elementwise_affine"]))
        elif t == "gelu":
            layers.append(nn.GELU(approximate=l["approximate"]))
        elif t == "dropout":
            layers.append(nn.Dropout(l["p"]))
        elif t == "flatten":
            layers.append(nn.Flatten(l["start_dim"], l["end_dim"]))
        elif t == "adaptive_avg_pool2d":
            layers.append(nn.AdaptiveAvgPool2d(tuple(l["output_size"])))
        else:
            layers.append({"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}[t]())
    return nn.Sequential(*layers)


class MatchesReferenceKernels(unittest.TestCase):
    """Rebuilding a reference kernel's model from its own weights and
    exporting it with the same metadata gives the reference file, byte for
    byte: same header JSON, key order, padding, tensor order and data."""

    def test_reexport_is_byte_identical(self):
        cases = sorted(os.listdir(GOLDEN))
        self.assertGreater(len(cases), 0)
        for case in cases:
            with self.subTest(case=case):
                with open(os.path.join(GOLDEN, case, "kernel.safetensors"), "rb") as f:
                    golden = f.read()
                meta, tensors = ee.read_safetensors(golden)
                (n,) = struct.unpack("<Q", golden[:8])
                header = json.loads(golden[8:8 + n])
                dtype = next(v["dtype"] for k, v in header.items() if k != "__metadata__")
                km = json.loads(meta["esper.kernel_metadata"])
                model = build(json.loads(meta["esper.module"]))
                if dtype == "F64":
                    model = model.double()
                sd = model.state_dict()
                for k in sd:
                    if sd[k].is_floating_point():
                        sd[k] = tensors[k].to(sd[k].dtype)
                model.load_state_dict(sd)
                data, out = ee.export_bytes(model, km["input_shape"], kernel_id=km["kernel_id"],
                                            blueprint_id=km["blueprint_id"], name=km["name"], dtype=dtype,
                                            device_requirements=km["device_requirements"],
                                            memory_footprint_mb=km["memory_footprint_mb"])
                self.assertEqual(out, km)
                self.assertEqual(data[:8 + n], golden[:8 + n], "header differs")
                self.assertEqual(data, golden)


class Layout(unittest.TestCase):
    def test_header_padded_and_metadata_first(self):
        model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU())
        data, meta = ee.export_bytes(model, [3], kernel_id="k")
        (n,) = struct.unpack("<Q", data[:8])
        self.assertEqual(n % 8, 0)
        header = data[8:8 + n].decode()
        self.assertTrue(header.startswith('{"__metadata__":{"format":"esper-kernel/v1","esper.module":'))
        parsed = json.loads(header)
        self.assertNotIn("1.num_batches_tracked", parsed)
        self.assertEqual([k for k in parsed if k != "__metadata__"],
                         ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"])
        self.assertEqual(meta["parameter_count"], 3 * 5 + 5 + 5 + 5)
        self.assertEqual(meta["output_shape"], [5])
        self.assertEqual(meta["compilation_target"], "safetensors")
        end = max(v["data_offsets"][1] for k, v in parsed.items() if k != "__metadata__")
        self.assertEqual(8 + n + end, len(data))

    def test_compiled_kernel_sidecar_carries_the_checksum(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.safetensors")
            meta = ee.export(nn.Sequential(nn.Linear(4, 2)), path, [4], kernel_id="k1", blueprint_id="bp")
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            self.assertEqual(meta["checksum"], digest)
            doc = ee.compiled_kernel(meta, meta["checksum"], "s3://esper-artifacts/kernels/k1/kernel.safetensors")
            self.assertEqual(doc["metadata"]["checksum"], digest)
            self.assertEqual(doc["binary_ref"], "s3://esper-artifacts/kernels/k1/kernel.safetensors")
            self.assertEqual((doc["kernel_id"], doc["blueprint_id"], doc["status"]), ("k1", "bp", "compiled"))
            json.dumps(doc)  # serialisable as is

    def test_named_sequential_tensors_are_named_by_position(self):
        # The format names child i's tensors "i.<name>"; a Sequential built
        # from an OrderedDict names them after its keys, which the host
        # would not find. The export must be the positional twin's, byte
        # for byte.
        from collections import OrderedDict
        torch.manual_seed(3)
        named = nn.Sequential(OrderedDict(
            fc=nn.Linear(4, 6), act=nn.ReLU(),
            block=nn.Sequential(OrderedDict(norm=nn.BatchNorm1d(6), out=nn.Linear(6, 2)))))
        twin = nn.Sequential(named.fc, named.act, nn.Sequential(named.block.norm, named.block.out))
        data, _ = ee.export_bytes(named, [4], kernel_id="k")
        want, _ = ee.export_bytes(twin, [4], kernel_id="k")
        _, tensors = ee.read_safetensors(data)
        self.assertEqual(list(tensors), ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "2.0.running_mean",
                                         "2.0.running_var", "2.1.weight", "2.1.bias"])
        self.assertEqual(data, want)
        with self.assertRaisesRegex(ee.UnsupportedModuleError, r"^unsupported module 'LSTM' at 'block\.lstm'$"):
            ee.module_graph(nn.Sequential(OrderedDict(fc=nn.Linear(4, 4), block=nn.Sequential(OrderedDict(lstm=nn.LSTM(4, 4))))))

    def test_training_mode_is_restored(self):
        model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        model.train()
        ee.export_bytes(model, [4])
        self.assertTrue(model.training)


if __name__ == "__main__":
    unittest.main()
