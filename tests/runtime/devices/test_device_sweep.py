"""A device latency file made on this host (local device): schema, precisions, plausibility, read-back."""

from __future__ import annotations

import json
import math

import pytest

from edgec.compiler.sweep_models import load_sweep_models
from edgec.core.errors import ConfigError
from edgec.runtime.devices import export_device_file
from edgec.runtime.devices.sweep import SCHEMA, load_device_file

# No CPU reaches 10 TFLOP/s on one op at batch 1; above that a time would be misread.
MAX_PLAUSIBLE_GFLOPS = 1e4


@pytest.fixture(scope="module")
def device_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "host.json"
    doc = export_device_file("local", path, target="android-arm64", models=load_sweep_models(["mobilenetv2"]),
                             max_per_op=2,
                             runs=5, warmup=1)
    return path, doc


def test_device_file_schema(device_file):
    path, doc = device_file
    assert json.loads(path.read_text()) == doc
    assert doc["schema"] == SCHEMA and doc["device"] == "local" and doc["target"] == "android-arm64"
    assert doc["precisions"] == ["fp32", "int8", "fp16"] and doc["skipped_precisions"] == {}
    assert doc["environment"]["onnxruntime_version"] and doc["threads"] == 2 and doc["level"] == "extended"
    keys = [entry["key"] for entry in doc["entries"]]
    assert len(keys) == len(set(keys))
    ops = {entry["op_type"] for entry in doc["entries"]}
    assert {"Conv", "Gemm", "Add"} <= ops  # MobileNetV2's convs, classifier and residual adds


def test_every_fp32_op_runs_and_times_are_plausible(device_file):
    _, doc = device_file
    fp32 = [e for e in doc["entries"] if e["precision"] == "fp32"]
    assert fp32 and all(e["ok"] for e in fp32), [e.get("error") for e in fp32 if not e["ok"]]
    for entry in (e for e in doc["entries"] if e["ok"]):
        wall = entry["wall_ms"]
        assert 0 < wall["min_ms"] <= wall["p50_ms"] <= wall["p90_ms"] <= wall["max_ms"] < math.inf
        assert entry["kernel_ms"] > 0 and entry["providers"] == ["CPUExecutionProvider"]
        assert entry["flops"] / (entry["kernel_ms"] * 1e6) < MAX_PLAUSIBLE_GFLOPS


def test_int8_entries_ran_int8_kernels(device_file):
    _, doc = device_file
    int8 = [e for e in doc["entries"] if e["precision"] == "int8"]
    assert int8 and {e["op_type"] for e in int8} <= {"Conv", "MatMul", "Gemm"}
    kernels = {n["op_type"] for e in int8 if e["ok"] for n in e["nodes"]}
    assert kernels & {"QLinearConv", "QGemm", "QLinearMatMul"}, kernels


def test_device_file_reads_back_for_the_latency_model(device_file):
    path, doc = device_file
    table = load_device_file(path)
    assert table.device == "local" and table.target == "android-arm64"
    entry = next(e for e in doc["entries"] if e["ok"] and e["op_type"] == "Conv")
    shapes = [i["shape"] for i in entry["inputs"]]
    assert table.lookup("Conv", entry["precision"], shapes) is not None
    assert table.lookup("Conv", "fp32", [[1, 1, 1, 1]]) is None


def test_bad_device_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ConfigError, match="bad.json: schema"):
        load_device_file(bad)
