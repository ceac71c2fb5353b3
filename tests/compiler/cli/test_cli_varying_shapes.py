"""Models with symbolic H x W, calibrated at several sizes from a folder of .npz files (one sample each)."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgec.compiler.cli import cli

SIZES = [(32, 48), (64, 64), (48, 96)]  # calibration pages; the bundle is then run at 40 x 80


class TextDetectorLike(torch.nn.Module):
    """A DB-style text detector in miniature: a strided encoder, nearest upsampling back, a probability map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.head = torch.nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.down(torch.relu(self.stem(x)))))
        return torch.sigmoid(self.head(torch.nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector")
    path = folder / "det.onnx"
    net = TextDetectorLike().eval()
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["prob"],
                          dynamic_axes={"images": {2: "height", 3: "width"}, "prob": {2: "height", 3: "width"}})
    calib = folder / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        np.savez(calib / f"page{i}.npz", images=rng.random((1, 3, h, w), dtype=np.float32))
    return path, calib


def _probability_map(model: str, h: int = 40, w: int = 80) -> np.ndarray:
    x = np.random.default_rng(1).random((1, 3, h, w), dtype=np.float32)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def _build(runner, detector, tmp_path, passes: str):
    model, calib = detector
    config = tmp_path / "edgec.toml"  # placement fixed: the race between placements is a timing question
    config.write_text(f'passes = {passes.split(",")!r}\n'.replace("'", '"')
                      + ('[pass-options.quantize-int8]\nplacement = "all"\nsamples = 3\n' if "int8" in passes else ""))
    out = tmp_path / "b"
    result = runner.invoke(cli, ["build", str(model), "--target", "cpu-x86", "--config", str(config),
                                 "--calib", str(calib), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


SAMPLE_FILES = ["sample.npz", "samples/1.npz", "samples/2.npz"]  # one per calibration size, in SIZES order


@pytest.mark.parametrize(("passes", "atol"), [("cleanup,fuse", 1e-5), ("cleanup,fuse,quantize-int8", 0.05)])
def test_calibrated_at_three_sizes_the_bundle_runs_at_a_fourth(runner, detector, tmp_path, passes, atol):
    model, calib = detector
    out, report = _build(runner, detector, tmp_path, passes)
    assert report["metrics"]["calibration_samples"] == len(SIZES)
    # FLOPs at the first sample's 32 x 48: the declared height x width are symbols.
    assert report["passes"][0]["before"]["flops"] > 2 * 8 * 3 * 9 * 32 * 48
    built = onnx.load(str(out / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in built.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]  # still symbolic: no --input-shape fixed them
    got, want = _probability_map(str(out / "model.onnx")), _probability_map(str(model))
    assert got.shape == want.shape == (1, 1, 40, 80)
    np.testing.assert_allclose(got, want, atol=atol)

    # The bundle keeps one sample per calibration size, each with the built model's outputs at that size.
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["samples"]] == SAMPLE_FILES
    assert [s["input_shapes"]["images"] for s in manifest["samples"]] == [[1, 3, h, w] for h, w in SIZES]
    assert manifest["distinct_sample_shapes"] == len(SIZES)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for rel, (h, w), page in zip(SAMPLE_FILES, SIZES, sorted(calib.iterdir()), strict=True):
        with np.load(out / rel, allow_pickle=False) as stored, np.load(page) as source:
            np.testing.assert_array_equal(stored["input/images"], source["images"])
            assert stored["output/prob"].shape == (1, 1, h, w)
            np.testing.assert_allclose(stored["output/prob"], session.run(None, {"images": source["images"]})[0],
                                       atol=1e-5)

    verified = runner.invoke(cli, ["verify", str(out)])
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    lines = [line for line in verified.stdout.splitlines() if line.startswith("ok sample ")]
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"ok sample {rel}", f"images 1x3x{h}x{w}"] for rel, (h, w) in zip(SAMPLE_FILES, SIZES, strict=True)]
    assert "bundle verified" in verified.stdout


def test_verify_names_the_tampered_sample(runner, detector, tmp_path):
    out, _ = _build(runner, detector, tmp_path, "cleanup,fuse")
    # Tampered bytes: the checksum names the file (exit 2, one line).
    original = (out / "samples/2.npz").read_bytes()
    with np.load(out / "samples/2.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["output/prob"] = arrays["output/prob"] + 0.01
    np.savez(out / "samples/2.npz", **arrays)
    result = runner.invoke(cli, ["verify", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {out}: samples/2.npz does not match its sha256 in the manifest (tampered or corrupt)"]

    # Tampered with the checksum updated too: the numbers name the sample and its shape (exit 1, one line).
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["samples/2.npz"] = hashlib.sha256((out / "samples/2.npz").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(cli, ["verify", str(out)])
    assert result.exit_code == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1
    assert failed[0].startswith("FAIL sample samples/2.npz: images 1x3x48x96: output prob: max abs 0.01")
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("ok sample")] == [
        "ok sample sample.npz", "ok sample samples/1.npz"]

    (out / "samples/2.npz").write_bytes(original)  # restored (and its old checksum): verified again
    manifest["files"]["samples/2.npz"] = hashlib.sha256(original).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0
