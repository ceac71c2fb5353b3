"""quantize-int8 / quantize-dynamic on real zoo models: accuracy budgets, refusals, opset upgrades, recovery."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import pytest
import torch

from edgec.compiler.pipeline import PipelineResult, run_pipeline
from edgec.core.errors import CalibrationError, ConfigError
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.targets.registry import get_target

ACCURACY_POINTS = 0.005  # "within 0.5 accuracy points"


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _run(name: str, passes: list[tuple[str, dict]], target: str = "cpu-x86", samples: int = 16) -> PipelineResult:
    zoo = get_zoo_model(name)
    ctx = BuildContext(get_target(target), zoo.calibration(samples), evaluate=zoo.evaluate if zoo.trained else None)
    proto = onnx.load(str(zoo.onnx_path()))
    return run_pipeline(proto, [create_pass(p, ctx, o) for p, o in passes], ctx)


@pytest.mark.parametrize("name", ["digits-cnn", "mnist-resnet"])
@pytest.mark.parametrize("calibration", ["minmax", "entropy"])
def test_trained_cnns_int8_within_half_a_point(name, calibration):
    zoo = get_zoo_model(name)
    result = _run(name, [("quantize-int8", {"calibration": calibration, "placement": "all"})])
    record = result.records[0]
    assert record.stats["method"] == "static" and record.stats["calibration"] == calibration
    ops = _ops(result.model)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # weights too
    before = zoo.evaluate(onnx.load(str(zoo.onnx_path())).SerializeToString())["accuracy"]
    after = zoo.evaluate(result.model.SerializeToString())["accuracy"]
    assert after >= before - ACCURACY_POINTS, (before, after)
    assert record.min_cosine > 0.99


def test_minilm_auto_picks_dynamic_per_channel():
    zoo = get_zoo_model("minilm")
    result = _run("minilm", [("fuse", {}), ("quantize-int8", {})], samples=8)
    record = result.records[1]
    assert record.stats["method"] == "dynamic" and record.stats["per_channel"]
    assert _ops(result.model)["DynamicQuantizeLinear"] > 0
    # fused Attention would keep the QKV weights float (ORT's QAttention refuses qkv_hidden_sizes)
    assert record.stats["attention_unpacked"] == 6 and "Attention" not in _ops(result.model)
    assert zoo.evaluate(result.model.SerializeToString())["mean_cosine"] >= 0.99


def test_dynamic_never_quantizes_conv():
    result = _run("digits-cnn", [("quantize-dynamic", {})])
    ops = _ops(result.model)
    original = _ops(onnx.load(str(get_zoo_model("digits-cnn").onnx_path())))
    assert "ConvInteger" not in ops and ops["Conv"] == original["Conv"]
    assert any("ConvInteger" in s["reason"] for s in result.records[0].skips)
    assert result.records[0].min_cosine > 0.99


def test_opset12_model_is_upgraded_for_per_channel(tmp_path):
    zoo = get_zoo_model("digits-cnn")
    path = tmp_path / "op12.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.torch_module(), (torch.from_numpy(zoo.calibration(1)[0]["input"]),), str(path),
                          dynamo=False, opset_version=12, input_names=["input"], output_names=["logits"])
    old = onnx.load(str(path))
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(8))
    result = run_pipeline(old, [create_pass("quantize-int8", ctx, {"placement": "all"})], ctx)
    assert result.records[0].stats["opset_upgraded"] == "12 -> 13"
    dq = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert any(a.name == "axis" for n in dq for a in n.attribute)
    assert result.records[0].min_cosine > 0.99


def test_why_not_faster_names_float_islands():
    result = _run("mnist-resnet", [("quantize-int8", {"placement": "all"})])
    report = result.records[0].stats["why_not_faster"]
    assert report["counts"].get("unfused-qdq", 0) > 0
    assert all({"node", "op_type", "kind", "detail"} <= set(f) for f in report["findings"])


def test_sensitivity_ranking_plot_and_recovery(tmp_path):
    plot = tmp_path / "sens.png"
    options = {"placement": "all", "max_drop": 0.0, "max_recovery_steps": 2, "sensitivity_plot": str(plot)}
    result = _run("digits-cnn", [("quantize-int8", options)])
    stats = result.records[0].stats
    errors = [s["error"] for s in stats["sensitivity"]]
    assert errors == sorted(errors, reverse=True) and len(errors) >= 3
    assert plot.stat().st_size > 1000
    assert stats["recovery_unit"] == "accuracy" and len(stats["recovery_steps"]) >= 1
    # every kept-float node is really float: no DequantizeLinear feeds it a weight
    weights_dq = {n.output[0] for n in result.model.graph.node if n.op_type == "DequantizeLinear"}
    for node in result.model.graph.node:
        if node.name in stats["recovery_kept_float"]:
            assert node.input[1] not in weights_dq


def test_keep_float_leaves_the_most_sensitive_nodes_float_and_lowers_the_error():
    plain = _run("mnist-resnet", [("quantize-int8", {"placement": "all"})])
    kept = _run("mnist-resnet", [("quantize-int8", {"placement": "all", "keep_float": 2})])
    stats = kept.records[0].stats
    ranked = [s["node"] for s in stats["sensitivity"]]
    assert stats["kept_float_by_sensitivity"] == ranked[:2]
    weights_dq = {n.output[0] for n in kept.model.graph.node if n.op_type == "DequantizeLinear"}
    float_nodes = [n for n in kept.model.graph.node if n.name in ranked[:2]]
    assert len(float_nodes) == 2 and all(n.input[1] not in weights_dq for n in float_nodes)
    # Checked against fp32 on the verification feeds: the two most sensitive float, the output moves less.
    assert kept.records[0].max_rel_error < plain.records[0].max_rel_error
    assert kept.records[0].min_cosine >= plain.records[0].min_cosine


def test_negative_keep_float_names_the_option():
    with pytest.raises(ConfigError, match="keep_float must be 0 or more"):
        _run("digits-cnn", [("quantize-int8", {"placement": "all", "keep_float": -1})])


def test_bad_calibration_is_a_calibration_error():
    zoo = get_zoo_model("digits-cnn")
    proto = onnx.load(str(zoo.onnx_path()))
    nan = zoo.calibration(8)
    nan[3]["input"] = nan[3]["input"].copy()
    nan[3]["input"][0, 0, 0, 0] = np.nan
    cases = [(nan, "NaN"), (zoo.calibration(2), "asked for 8"),
             ([{"input": f["input"].astype(np.float64)} for f in zoo.calibration(8)], "dtype"),
             ([{"wrong": f["input"]} for f in zoo.calibration(8)], "no input 'input'")]
    for feeds, fragment in cases:
        ctx = BuildContext(get_target("cpu-x86"), feeds)
        with pytest.raises(CalibrationError, match=fragment):
            create_pass("quantize-int8", ctx, {"samples": 8})(onnx_ir_model(proto))


def test_unsupported_precision_for_target_is_refused():
    proto = onnx.load(str(get_zoo_model("digits-cnn").onnx_path()))
    for name, target in [("fp8", "android-arm64"), ("quantize-int4", "ios-arm64"), ("quantize-dynamic", "cuda")]:
        ctx = BuildContext(get_target(target), get_zoo_model("digits-cnn").calibration(8))
        with pytest.raises(ConfigError, match=target):
            create_pass(name, ctx)(onnx_ir_model(proto))


def onnx_ir_model(proto: onnx.ModelProto):
    from edgec.core.ir import to_ir

    return to_ir(proto)
