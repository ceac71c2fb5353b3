"""profile_model: percentiles from timed runs and the slowest nodes from ORT's own trace."""

from __future__ import annotations

import tempfile

import pytest

from edgec.core.errors import ConfigError, ModelLoadError
from edgec.runtime.bundle import write_bundle
from edgec.runtime.profile import profile_model
from edgec.targets.registry import get_target

# Op types the tiny classifier can run as at each level (the CPU EP fuses Conv+Relu, MatMul+Add).
KNOWN_OPS = {"Conv", "FusedConv", "Relu", "GlobalAveragePool", "Flatten", "MatMul", "Add", "Gemm", "Softmax",
             "ReorderInput", "ReorderOutput"}


def _check(result, runs, top):
    assert result.runs == runs and result.warmup == 2 and result.threads == 1
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.mean_ms > 0
    assert 0 < len(result.top_nodes) <= top
    assert {n.op_type for n in result.top_nodes} <= KNOWN_OPS
    assert all(n.provider == "CPUExecutionProvider" for n in result.top_nodes)
    times = [n.total_ms for n in result.top_nodes]
    assert times == sorted(times, reverse=True) and times[-1] >= 0
    assert 0 < sum(n.share for n in result.top_nodes) <= 1 + 1e-9


def test_profile_onnx_bytes(tiny_model, tiny_feeds, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the trace goes here and must be gone after
    result = profile_model(tiny_model.SerializeToString(), tiny_feeds, runs=20, warmup=2, level="disabled",
                           top=3)
    _check(result, 20, 3)
    # Unoptimized, every graph node is its own kernel and keeps its name.
    graph_nodes = {"conv", "relu", "gap", "flatten", "fc", "fc_bias", "softmax"}
    assert {n.name for n in result.top_nodes} <= graph_nodes
    assert list(tmp_path.iterdir()) == []


def test_profile_ort_file_lists_all_nodes(tmp_path, tiny_model, tiny_feeds):
    bundle = write_bundle(tmp_path / "b", model=tiny_model, target=get_target("android-arm64"),
                          sample_inputs=tiny_feeds)
    result = profile_model(bundle / "model.ort", tiny_feeds, runs=15, warmup=2, level="extended", top=10)
    _check(result, 15, 10)
    assert "FusedConv" in {n.op_type for n in result.top_nodes}
    # With top above the node count every kernel is listed, so the shares cover all kernel time.
    assert sum(n.share for n in result.top_nodes) == pytest.approx(1.0)
    assert sorted(p.name for p in bundle.iterdir() if p.suffix == ".json") == ["manifest.json"]


def test_profile_rejects_bad_arguments(tiny_model, tiny_feeds, tmp_path):
    with pytest.raises(ConfigError, match="runs must be >= 1"):
        profile_model(tiny_model.SerializeToString(), tiny_feeds, runs=0)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        profile_model(tmp_path / "junk.onnx", tiny_feeds, runs=1)
