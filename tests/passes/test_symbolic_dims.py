"""Passes on a detector exported with symbolic batch/height/width, by both torch exporters.

The zoo's yolo-det (C2f Split/Concat, SiLU as x * sigmoid(x), nearest upsampling, a head that decodes
boxes against a grid built from the feature maps' H x W) is exported by dynamo (the zoo's file) and by
the TorchScript exporter. Calibrated at 320 x 320, each pass must do what it does with fixed shapes, keep
the dims symbolic, and give a model that runs at 416 x 416 and at batch 2.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edgec.compiler.cli import cli
from edgec.models.zoo import get_zoo_model
from edgec.runtime.session import compare_outputs

EXPORTERS = ("dynamo", "torchscript")
SIZES = {"320": (1, 3, 320, 320), "416": (1, 3, 416, 416), "batch2": (2, 3, 320, 320)}


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> dict[str, Path]:
    """exporter -> the yolo-det ONNX with symbolic batch/height/width."""
    zoo = get_zoo_model("yolo-det")
    folder = tmp_path_factory.mktemp("yolo")
    legacy = folder / "yolo-torchscript.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.torch_module(), (torch.randn(1, 3, 320, 320),), str(legacy), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["output0"],
                          dynamic_axes=zoo.dynamic_axes)
    return {"dynamo": Path(zoo.onnx_path()), "torchscript": legacy}


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """Eight 320 x 320 images, stacked on a new leading axis (the batch dim is symbolic too)."""
    path = tmp_path_factory.mktemp("calib") / "images.npz"
    np.savez(path, images=np.random.default_rng(0).standard_normal((8, 1, 3, 320, 320), dtype=np.float32))
    return path


def _build(tmp_path: Path, model: Path, calib: Path, passes: str, *extra: str) -> dict:
    out = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
    chosen = ["--passes", passes] if passes else []
    result = CliRunner().invoke(cli, ["build", str(model), "--target", "cpu-x86", "--calib", str(calib), *chosen,
                                      "-o", str(out), "--json", "-q", *extra])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout)
    manifest["model_path"] = out / "model.onnx"
    return manifest


def _record(manifest: dict, name: str) -> dict:
    return next(p for p in manifest["passes"] if p["name"] == name)


def _compute_ops(path: Path) -> Counter:
    """Op counts of the nodes that read image data; Shape-derived arithmetic (the head's grid) is left out.

    With fixed shapes that arithmetic folds to constants; with symbolic ones it must stay, since it
    depends on H x W. Every other node must be the same in both builds.
    """
    graph = onnx.load(path).graph
    data = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    ops: Counter = Counter()
    for node in graph.node:
        if node.op_type != "Shape" and any(name in data for name in node.input):
            data.update(node.output)
            ops[node.op_type] += 1
    return ops


def _outputs(model: Path, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The output at a held-out random image of ``shape`` (not a calibration one)."""
    x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return {"output0": session.run(None, {"images": x})[0]}


def _symbolic_input(path: Path) -> list[str]:
    return [d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim if d.dim_param]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fuse_and_prune_depth_do_at_symbolic_dims_what_they_do_at_fixed_shapes(tmp_path, detector, calib, exporter):
    model = detector[exporter]
    symbolic = _build(tmp_path, model, calib, "cleanup,fuse,prune-depth")
    fixed = _build(tmp_path, model, calib, "cleanup,fuse,prune-depth", "--input-shape", "images=1x3x320x320")
    # Same fusions: the nodes reading data are the same ops; only the grid arithmetic stays unfolded.
    assert _compute_ops(symbolic["model_path"]) == _compute_ops(fixed["model_path"])
    assert _record(symbolic, "fuse")["before"]["flops"] == pytest.approx(_record(fixed, "fuse")["before"]["flops"],
                                                                          rel=1e-3)
    assert len(_symbolic_input(symbolic["model_path"])) == 3 and not _symbolic_input(fixed["model_path"])
    depth_symbolic, depth_fixed = _record(symbolic, "prune-depth")["stats"], _record(fixed, "prune-depth")["stats"]
    assert depth_symbolic["blocks_removable"] == depth_fixed["blocks_removable"] > 0
    assert depth_symbolic["blocks_dropped"] == depth_fixed["blocks_dropped"]
    for size in ("416", "batch2"):
        errors = compare_outputs([_outputs(model, SIZES[size])], [_outputs(symbolic["model_path"], SIZES[size])])
        assert errors[0].cosine > 0.9, size  # one block of a random-init detector dropped: lossy, but the same map


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_prune_channels_goes_through_silu_split_concat_and_upsampling(tmp_path, detector, calib, exporter):
    model = detector[exporter]
    toml = tmp_path / "edgec.toml"
    toml.write_text('passes = ["cleanup", "fuse", "prune-channels"]\n[pass-options.prune-channels]\nratio = 0.3\n')
    built = _build(tmp_path, model, calib, "", "--config", str(toml))
    record = _record(built, "prune-channels")
    assert record["stats"]["analysed_at"] == {"images": [1, 3, 320, 320]}
    fixed = _record(_build(tmp_path, model, calib, "", "--config", str(toml), "--input-shape", "images=1x3x320x320"),
                    "prune-channels")
    for key in ("groups", "frozen_groups", "channels_before", "channels_after"):
        assert record["stats"][key] == fixed["stats"][key], key  # the same plan as with fixed shapes
    frozen_by = " ".join(s["where"] for s in record["skips"])
    for op in ("Mul", "Sigmoid", "Split", "Concat", "Resize"):
        assert f"({op})" not in frozen_by, frozen_by  # only the head's output Reshapes keep their channels
    assert record["after"]["params"] < 0.8 * record["before"]["params"]
    pruned = onnx.load(built["model_path"])
    widths = {i.name: i.dims[0] for i in pruned.graph.initializer if len(i.dims) == 4}
    producer = {out: n for n in pruned.graph.node for out in n.output}
    for resize in (n for n in pruned.graph.node if n.op_type == "Resize"):
        silu = producer[resize.input[0]]
        conv = next(producer[i] for i in silu.input if producer.get(i) is not None and producer[i].op_type == "Conv")
        original = {i.name: i.dims[0] for i in onnx.load(model).graph.initializer if len(i.dims) == 4}
        assert widths[conv.input[1]] < max(original.values())  # the upsampled tensor lost channels
    assert _symbolic_input(built["model_path"])
    for size in SIZES.values():
        assert _outputs(built["model_path"], size)["output0"].shape == _outputs(model, size)["output0"].shape


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_quantize_int8_builds_and_runs_at_other_sizes(tmp_path, detector, calib, exporter):
    model = detector[exporter]
    built = _build(tmp_path, model, calib, "cleanup,fuse,quantize-int8")
    assert _symbolic_input(built["model_path"])
    for size in SIZES.values():
        errors = compare_outputs([_outputs(model, size)], [_outputs(built["model_path"], size)])
        assert errors[0].cosine > 0.98, size
