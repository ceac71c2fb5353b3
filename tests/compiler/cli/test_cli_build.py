"""edgec build/verify/profile/inspect/targets through the real CLI on a real exported model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnxruntime as ort

from edgec.compiler.cli import cli
from edgec.runtime import load


def _build(runner, *args):
    return runner.invoke(cli, ["build", *map(str, args), "--quiet"], catch_exceptions=False)


def test_build_verify_profile_inspect(runner, tiny_onnx, tmp_path):
    out = tmp_path / "bundle"
    result = runner.invoke(cli, ["build", str(tiny_onnx), "--target", "cpu-x86", "--calib", "random",
                                 "--passes", "cleanup,fuse", "-o", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [p["name"] for p in report["passes"]] == ["cleanup", "fuse"]
    # The lossless passes must keep outputs within 1e-5 relative of the input model.
    assert all(p["max_rel_error"] <= 1e-5 for p in report["passes"])
    assert any("random" in w for w in report["warnings"])
    assert report["report"] == str(out) + ".report.html" and pathlib.Path(report["report"]).is_file()

    bundle = load(out)
    source = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    x = bundle.sample_inputs["x"]
    np.testing.assert_allclose(bundle.session.run(None, {"x": x})[0], source.run(None, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)

    verified = runner.invoke(cli, ["verify", str(out)])
    assert verified.exit_code == 0, verified.stdout
    assert "bundle verified" in verified.stdout

    profiled = runner.invoke(cli, ["profile", str(out), "--runs", "20", "--warmup", "2", "--json"])
    assert profiled.exit_code == 0, profiled.stderr
    prof = json.loads(profiled.stdout)
    assert 0 < prof["p50_ms"] <= prof["p90_ms"] <= prof["p99_ms"]
    assert prof["top_nodes"] and {"name", "op_type", "total_ms"} <= set(prof["top_nodes"][0])

    inspected = runner.invoke(cli, ["inspect", str(out), "--json"])
    assert inspected.exit_code == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["inputs"][0]["name"] == "x" and info["flops"] > 0 and info["unsupported"] == []
    assert sum(n["flops"] for n in info["node_flops"]) == info["flops"]


def test_zip_bundle_for_android_carries_ort_model(runner, tiny_onnx, tmp_path):
    out = tmp_path / "b.zip"
    result = _build(runner, tiny_onnx, "--target", "android-arm64", "--calib", "random", "-o", out,
                    "--format", "zip")
    assert result.exit_code == 0, result.stderr
    bundle = load(out)
    assert bundle.manifest["model_file"] == "model.ort"
    assert "model.ort" in bundle.manifest["files"] and "required_operators.config" in bundle.manifest["files"]
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0


def test_human_output_shows_pass_table(runner, tiny_onnx, tmp_path):
    result = runner.invoke(cli, ["build", str(tiny_onnx), "--target", "cpu-x86", "--calib", "random",
                                 "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.stderr
    assert "cleanup" in result.stdout and "fuse" in result.stdout and "bundle written" in result.stdout


def test_targets_lists_every_profile(runner):
    result = runner.invoke(cli, ["targets", "--json"])
    assert result.exit_code == 0
    assert set(json.loads(result.stdout)) == {"cpu-x86", "cuda", "tensorrt", "android-arm64", "ios-arm64"}
    assert "NnapiExecutionProvider" in runner.invoke(cli, ["targets"]).stdout


def test_inspect_model_names_android_fallbacks(runner, tiny_onnx):
    result = runner.invoke(cli, ["inspect", str(tiny_onnx), "--target", "ios-arm64", "--json"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["target"] == "ios-arm64"
    assert info["op_histogram"]["Conv"] == 2


def test_inspect_lists_residual_blocks_with_reasons(runner):
    result = runner.invoke(cli, ["inspect", "zoo:mnist-resnet", "--json"])
    assert result.exit_code == 0, result.stderr
    blocks = {b["name"]: b for b in json.loads(result.stdout)["blocks"]}
    assert sorted(name for name, b in blocks.items() if b["removable"]) == ["features.2", "features.5"]
    assert "Concat" in blocks["features.3"]["reason"]


def test_no_timing_builds_the_same_model_and_says_what_it_skipped(runner, tiny_onnx, tmp_path):
    timed, untimed = tmp_path / "timed", tmp_path / "untimed"
    assert _build(runner, tiny_onnx, "--target", "cpu-x86", "--calib", "random", "-o", timed).exit_code == 0
    result = _build(runner, tiny_onnx, "--target", "cpu-x86", "--calib", "random", "-o", untimed, "--no-timing")
    assert result.exit_code == 0, result.stderr
    with_times, without = load(timed).manifest["metrics"], load(untimed).manifest["metrics"]
    assert "host_latency_ms" in with_times and "before" in with_times["node_times"]
    assert "host_latency_ms" not in without and "--no-timing" in without["node_times"]["error"]
    # Everything but the timing is still measured, and the models are the same graph.
    assert without["output_error"] == with_times["output_error"]
    assert (untimed / "model.onnx").read_bytes() == (timed / "model.onnx").read_bytes()
    assert "--no-timing" in (tmp_path / "untimed.report.html").read_text(encoding="utf-8")


def test_config_file_timing_must_be_a_boolean(runner, tiny_onnx, tmp_path):
    config = tmp_path / "edgec.toml"
    config.write_text(f'model = "{tiny_onnx}"\ntarget = "cpu-x86"\ntiming = "no"\n', encoding="utf-8")
    result = runner.invoke(cli, ["build", "--config", str(config), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert f"{config}: 'timing' must be true or false" in result.stderr
    assert not (tmp_path / "b").exists()
