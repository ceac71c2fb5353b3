"""Models with symbolic H x W, calibrated at several sizes from a folder of .npz files (one sample each)."""

from __future__ import annotations

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


@pytest.mark.parametrize(("passes", "atol"), [("cleanup,fuse", 1e-5), ("cleanup,fuse,quantize-int8", 0.05)])
def test_calibrated_at_three_sizes_the_bundle_runs_at_a_fourth(runner, detector, tmp_path, passes, atol):
    model, calib = detector
    config = tmp_path / "edgec.toml"  # placement fixed: the race between placements is a timing question
    config.write_text(f'passes = {passes.split(",")!r}\n'.replace("'", '"')
                      + ('[pass-options.quantize-int8]\nplacement = "all"\nsamples = 3\n' if "int8" in passes else ""))
    out = tmp_path / "b"
    result = runner.invoke(cli, ["build", str(model), "--target", "cpu-x86", "--config", str(config),
                                 "--calib", str(calib), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    report = __import__("json").loads(result.stdout)
    assert report["metrics"]["calibration_samples"] == len(SIZES)
    # FLOPs at the first sample's 32 x 48: the declared height x width are symbols.
    assert report["passes"][0]["before"]["flops"] > 2 * 8 * 3 * 9 * 32 * 48
    built = onnx.load(str(out / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in built.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]  # still symbolic: no --input-shape fixed them
    got, want = _probability_map(str(out / "model.onnx")), _probability_map(str(model))
    assert got.shape == want.shape == (1, 1, 40, 80)
    np.testing.assert_allclose(got, want, atol=atol)
