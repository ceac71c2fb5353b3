"""cuda bundles (fp32, fp16, int8, fp8) built, then profiled and verified on a GPU when this host has one."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgec.compiler.cli import cli
from edgec.runtime.devices import profile_on_device, verify_on_device

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="no CUDA execution provider here (install edgec[gpu] on a machine with an NVIDIA GPU)")

PASSES = {"fp32": "fuse", "fp16": "fuse,fp16", "int8": "fuse,quantize-int8", "fp8": "fuse,fp8"}


@pytest.mark.parametrize("precision", list(PASSES))
def test_cuda_bundle_runs_on_the_gpu_and_matches(tmp_path, precision):
    out = tmp_path / precision
    result = CliRunner().invoke(cli, ["build", "zoo:mnist-resnet", "--target", "cuda", "--passes",
                                      PASSES[precision], "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    report = verify_on_device(out, "local")
    assert report.ok, report.problems
    profile = profile_on_device(out, "local", runs=20, warmup=5)
    assert "CUDAExecutionProvider" in profile["providers_used"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution_providers"][0] == "CUDAExecutionProvider"
