"""profile/verify --device through the CLI, on the local device (the ssh transport has its own tests)."""

from __future__ import annotations

import json

import pytest

from edgec.compiler.cli import cli


@pytest.fixture(scope="module")
def bundle(tiny_onnx, tmp_path_factory):
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("dev") / "bundle"
    result = CliRunner().invoke(cli, ["build", str(tiny_onnx), "--target", "cpu-x86", "--calib", "random",
                                      "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    return out


def test_profile_on_local_device(runner, bundle):
    result = runner.invoke(cli, ["profile", str(bundle), "--device", "local", "--runs", "10", "--warmup", "2",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert 0 < data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"]
    assert data["top_nodes"] and data["environment"]["onnxruntime_version"]


def test_verify_on_local_device(runner, bundle):
    result = runner.invoke(cli, ["verify", str(bundle), "--device", "local"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "bundle verified" in result.stdout


def test_malformed_device_is_a_one_line_error(runner, bundle):
    result = runner.invoke(cli, ["profile", str(bundle), "--device", "usb:phone"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--device" in result.stderr
