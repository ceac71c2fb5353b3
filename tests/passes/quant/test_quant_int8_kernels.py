"""int8 that ORT can run fast: fused-attention unpacking, int8-friendly rewrites, depthwise padding, placement."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from helpers import outputs

from edgec.compiler.pipeline import run_pipeline
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.quant import placement
from edgec.passes.quant.analysis import optimized_graph
from edgec.passes.quant.attention import unpack_attention
from edgec.passes.quant.common import name_nodes
from edgec.passes.quant.int8ops import prepare_float
from edgec.passes.quant.pad import pad_depthwise
from edgec.passes.quant.static import preprocess
from edgec.runtime.session import compare_outputs
from edgec.targets.registry import get_target

FLOAT_ONLY_OPS = {"HardSwish", "HardSigmoid", "ReduceMean", "Sigmoid", "Mul", "Add", "Conv"}


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def fused_bert() -> tuple[onnx.ModelProto, list]:
    zoo = get_zoo_model("bert-like")
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(2))
    fused = run_pipeline(onnx.load(str(zoo.onnx_path())), [create_pass("fuse", ctx)], ctx).model
    return fused, zoo.calibration(2, "eval")


def test_unpacked_attention_is_exact_in_float(fused_bert):
    fused, feeds = fused_bert
    assert _ops(fused)["Attention"] == 6
    unpacked, count, left = unpack_attention(onnx.load_from_string(fused.SerializeToString()))
    assert count == 6 and not left
    ops = _ops(unpacked)
    assert "Attention" not in ops and ops["MultiHeadAttention"] == 6
    onnx.checker.check_model(unpacked)
    for err in compare_outputs(outputs(fused, feeds), outputs(unpacked, feeds)):
        assert err.max_rel < 1e-4, err


def test_dynamic_int8_reaches_qkv_weights(fused_bert):
    fused, feeds = fused_bert
    zoo = get_zoo_model("bert-like")
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(2))
    result = run_pipeline(fused, [create_pass("quantize-dynamic", ctx)], ctx)
    record = result.records[0]
    assert record.stats["attention_unpacked"] == 6 and not record.skips
    # four weight MatMuls per layer (QKV, output, two FFN), all int8; the embeddings too
    assert record.stats["dynamic_quantizers"] == 24
    ops = _ops(result.model)
    assert "Attention" not in ops and ops["MatMul"] == 0
    assert len(result.model.SerializeToString()) < 0.3 * len(fused.SerializeToString())
    assert record.min_cosine > 0.999


def test_attention_with_mask_index_is_left_with_a_note(fused_bert):
    fused, _ = fused_bert
    proto = onnx.load_from_string(fused.SerializeToString())
    node = next(n for n in proto.graph.node if n.op_type == "Attention")
    node.input[3] = "attention_mask"  # a mask_index: MultiHeadAttention spells masks differently
    _, count, left = unpack_attention(proto)
    assert count == 5 and "mask_index" in left[node.name]


@pytest.fixture(scope="module")
def mobilenet_pre(tmp_path_factory) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    zoo = get_zoo_model("mobilenetv3-large")
    folder = tmp_path_factory.mktemp("mnv3")
    preprocess(zoo.onnx_path(), folder / "pre.onnx")
    return onnx.load(str(zoo.onnx_path())), onnx.load(str(folder / "pre.onnx")), zoo.calibration(2, "eval")


def test_int8_rewrites_and_padding_are_exact_in_float(mobilenet_pre):
    fp32, pre, feeds = mobilenet_pre
    name_nodes(pre)
    rewritten, counts = prepare_float(pre)
    assert counts == {"ReduceMean": 9}
    padded, notes = pad_depthwise(rewritten, 16)
    grown = {k: v for k, v in notes.items() if "->" in v}
    assert grown["node_Conv_681"] == "72 -> 80 channels" and len(grown) == 7
    ops = _ops(padded)
    assert "ReduceMean" not in ops and ops["GlobalAveragePool"] == 9
    widths = [n for n in padded.graph.node if n.op_type == "Conv"
              and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert all(next(a.i for a in n.attribute if a.name == "group") % 16 == 0 for n in widths)
    onnx.checker.check_model(padded)
    for err in compare_outputs(outputs(fp32, feeds), outputs(padded, feeds)):
        assert err.max_rel < 1e-4, err


def test_mobilenetv3_runs_int8_end_to_end():
    zoo = get_zoo_model("mobilenetv3-large")
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(8))
    result = run_pipeline(onnx.load(str(zoo.onnx_path())),
                          [create_pass("quantize-int8", ctx, {"placement": "all"})], ctx)
    stats = result.records[0].stats
    assert len(stats["depthwise_padded"]) == 7
    # what ORT actually runs: every conv, activation, SE gate and pooling as an int8 kernel;
    # the only Q/DQ left are at the graph input and output
    ran = _ops(optimized_graph(result.model.SerializeToString()))
    assert not FLOAT_ONLY_OPS & set(ran), ran
    assert ran["QuantizeLinear"] == 1 and ran["DequantizeLinear"] == 1
    assert ran["QLinearConv"] == 62 and ran["QLinearGlobalAveragePool"] == 9
    assert stats["why_not_faster"]["counts"]["unfused-qdq"] == 2
    assert result.records[0].min_cosine > 0.95


def test_clean_cuts_and_prefix_candidates(mobilenet_pre):
    _, pre, _ = mobilenet_pre
    name_nodes(pre)
    cuts = placement.clean_cuts(pre)
    nodes = pre.graph.node
    for cut in cuts[:10]:
        made = {o for n in nodes[: cut + 1] for o in n.output}
        read_later = {i for n in nodes[cut + 1:] for i in n.input} | {o.name for o in pre.graph.output}
        assert len(made & read_later) == 1
    candidates = placement.prefix_candidates(pre)
    assert 1 <= len(candidates) <= placement.MAX_PREFIX_CANDIDATES
    for excluded in candidates.values():
        assert excluded == [n.name for n in nodes[: len(excluded)]]


def test_fp32_winning_the_race_keeps_the_model_float(monkeypatch):
    zoo = get_zoo_model("digits-cnn")
    proto = onnx.load(str(zoo.onnx_path()))
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(8))
    # the race's outcome is forced (timings are noise in tests); what is checked is the fallback
    monkeypatch.setattr(placement, "fastest", lambda models, *a, **k: ("float", {"float": 1.0, "all": 1.3}))
    result = run_pipeline(proto, [create_pass("quantize-int8", ctx)], ctx)
    record = result.records[0]
    assert record.stats["placement"] == "float"
    assert any("kept float" in s["reason"] and "1.30x" in s["reason"] for s in record.skips)
    assert "QuantizeLinear" not in _ops(result.model)
    feeds = zoo.calibration(2, "eval")
    for err in compare_outputs(outputs(proto, feeds), outputs(result.model, feeds)):
        assert err.max_abs == 0.0


SILU_NET = """
<ir_version: 8, opset_import: ["" : 17]>
silu (float[1, 16, 14, 14] x) => (float[1, 16, 14, 14] y) <float[32, 16, 1, 1] w1, float[16, 32, 1, 1] w2> {
    h = Conv(x, w1)
    g = Sigmoid(h)
    s = Mul(h, g)
    y = Conv(s, w2)
}
"""


def _silu_net() -> tuple[onnx.ModelProto, list]:
    model = onnx.parser.parse_model(SILU_NET)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (32, 16, 1, 1)), ("w2", (16, 32, 1, 1))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) / 4).astype(np.float32), name))
    feeds = [{"x": rng.standard_normal((1, 16, 14, 14)).astype(np.float32)} for _ in range(8)]
    return model, feeds


def test_silu_folds_into_quickgelu_exactly():
    model, feeds = _silu_net()
    name_nodes(model)
    rewritten, counts = prepare_float(onnx.load_from_string(model.SerializeToString()), quick_gelu=True)
    assert counts == {"SiLU": 1}
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "QuickGelu", "Conv"]
    for err in compare_outputs(outputs(model, feeds), outputs(rewritten, feeds)):
        assert err.max_rel < 1e-5, err


@pytest.mark.parametrize(("target", "float_silu"), [("cpu-x86", True), ("android-arm64", False)])
def test_silu_stays_float_only_where_the_first_ep_runs_quickgelu(target, float_silu):
    # cpu-x86: DQ -> QuickGelu -> Q (one vectorized float pass) beats ORT's int8 SiLU (a QLinearSigmoid
    # lookup table plus a QLinearMul); NNAPI (android's first EP) has no QuickGelu, so SiLU stays int8 there.
    model, feeds = _silu_net()
    ctx = BuildContext(get_target(target), feeds)
    result = run_pipeline(model, [create_pass("quantize-int8", ctx, {"placement": "all"})], ctx)
    record = result.records[0]
    assert record.stats["rewritten_for_int8"] == ({"SiLU": 1} if float_silu else {})
    ran = _ops(optimized_graph(result.model.SerializeToString()))
    assert ran["QLinearConv"] == 2
    if float_silu:
        # ORT moves its NHWC Transposes through DQ/QuickGelu/Q: only the two at the graph's edges remain
        assert ran["QuickGelu"] == 1 and "QLinearSigmoid" not in ran and ran["Transpose"] == 2, ran
    else:
        assert ran["QLinearSigmoid"] == 1 and ran["QLinearMul"] == 1, ran
    assert record.min_cosine > 0.99


def test_placement_ties_go_to_the_most_accurate():
    ratios = {"float": 1.0, "all": 0.86, "float-prefix:a": 0.748, "float-prefix:b": 0.762, "float-prefix:c": 0.78}
    assert placement.near_fastest(ratios, margin=0.025) == ["float-prefix:a", "float-prefix:b"]
    errors = {"float-prefix:a": 0.015, "float-prefix:b": 0.007}
    assert placement.settle_tie(ratios, errors) == "float-prefix:b"
    assert placement.settle_tie(ratios, {"float-prefix:a": 0.01, "float-prefix:b": 0.01}) == "float-prefix:a"
