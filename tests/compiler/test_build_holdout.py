"""A plain build with a lossy pass fits on part of the calibration data and reports its accuracy on the rest."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import build_with_config, outputs

from edgec.compiler.cli import cli
from edgec.core.agreement import agreement_score
from edgec.models.zoo import get_zoo_model

PROXY = "agreement with the original's outputs (proxy; logits: pearson)"


def _toml(passes: list[str], samples: int, options: str = "") -> str:
    return f"passes = {json.dumps(passes)}\n{options}\n[calibration]\nsamples = {samples}\n"


def _calibration(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["metrics"]["calibration"]


def test_overfit_pruning_scores_lower_on_held_out_samples(tmp_path):
    # lstsq recovery refits the pruned layers to the 6 fit samples, which it then matches almost exactly.
    options = '[pass-options.prune-channels]\nratio = 0.6\nrecovery = "lstsq"\n'
    result, out = build_with_config(tmp_path, _toml(["cleanup", "prune-channels"], 8, options), "zoo:mnist-resnet",
                                    "--target", "cpu-x86", "--json")
    assert result.exit_code == 0, result.stderr
    cal = _calibration(out)
    assert json.loads(result.stdout)["metrics"]["calibration"] == cal
    assert {k: cal["split"][k] for k in ("fit", "held_out", "in_sample", "held_out_indices")} == {
        "fit": 6, "held_out": 2, "in_sample": False, "held_out_indices": [3, 7]}
    held, fit = cal["held_out"], cal["fit"]
    assert held["metric"] == fit["metric"] == PROXY
    # Measured: fit 1.0000, held-out 0.43.
    assert fit["after"] > 0.999
    assert held["after"] < fit["after"] - 0.2
    assert held["before"] == pytest.approx(1.0, abs=1e-6)
    # The held-out figure is the proxy on samples 3 and 7 alone, recomputed here.
    zoo = get_zoo_model("mnist-resnet")
    feeds = zoo.calibration(8)
    held_feeds = [feeds[3], feeds[7]]
    want = agreement_score(outputs(zoo.onnx_path(), held_feeds), outputs(out / "model.onnx", held_feeds))
    assert held["after"] == pytest.approx(want, abs=1e-4)
    # The zoo's own metric, on its evaluation split, falls too (measured 0.981 -> 0.653).
    assert cal["task"]["metric"] == "zoo:mnist-resnet held-out metric"
    assert cal["task"]["after"] < cal["task"]["before"] - 0.1


def test_summary_line_quotes_the_held_out_score(tmp_path):
    (tmp_path / "edgec.toml").write_text(_toml(["cleanup", "fuse", "quantize-int8"], 16))
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["build", "zoo:digits-cnn", "--target", "cpu-x86", "--config",
                                      str(tmp_path / "edgec.toml"), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    cal = _calibration(out)
    assert cal["split"]["held_out_indices"] == [3, 7, 11, 15]
    held, fit = cal["held_out"], cal["fit"]
    # int8 ranges fitted on 12 samples generalise: measured 0.99994 held out, 0.99994 fit.
    assert held["after"] > 0.999 and held["after"] <= fit["after"] + 1e-3
    line = next(x for x in result.stdout.splitlines() if x.startswith("accuracy on held-out calibration samples"))
    assert line == (f"accuracy on held-out calibration samples: {held['before']:.4f} -> {held['after']:.4f} "
                    f"(4 samples; fit on 12, where it scores {fit['after']:.4f}); {PROXY}")


def test_lossless_pipeline_uses_every_sample(tmp_path):
    result, out = build_with_config(tmp_path, _toml(["cleanup", "fuse"], 8), "zoo:digits-cnn", "--target", "cpu-x86")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["calibration"] == {"split": "none: no lossy pass", "samples": 8}
    assert metrics["calibration_samples"] == 8
    assert max(e["max_rel"] for e in metrics["output_error"]) < 1e-4


def test_one_sample_is_scored_in_sample(tmp_path):
    options = "[pass-options.quantize-int8]\nsamples = 1\n"
    result, out = build_with_config(tmp_path, _toml(["quantize-int8"], 1, options), "zoo:digits-cnn",
                                    "--target", "cpu-x86")
    assert result.exit_code == 0, result.stderr
    cal = _calibration(out)
    assert {k: cal["split"][k] for k in ("fit", "held_out", "in_sample", "held_out_indices")} == {
        "fit": 1, "held_out": 1, "in_sample": True, "held_out_indices": [0]}
    assert cal["held_out"] == cal["fit"]
    assert 0.99 < cal["held_out"]["after"] <= 1.0 + 1e-9


def test_a_pass_asking_for_every_sample_gets_them_in_sample(tmp_path):
    # quantize-int8 asks for 8 and 8 are given: holding 2 out would fail a build that worked unsplit.
    result, out = build_with_config(tmp_path, _toml(["quantize-int8"], 8), "zoo:digits-cnn", "--target", "cpu-x86")
    assert result.exit_code == 0, result.stderr
    cal = _calibration(out)
    assert cal["split"]["in_sample"] is True and cal["split"]["fit"] == 8
    assert "give 10 or more for a held-out score" in cal["split"]["reason"]
    assert cal["held_out"]["after"] > 0.99
