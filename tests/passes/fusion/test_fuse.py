"""The fuse pass: Conv+BN and MatMul+Add fold, transformer blocks fuse into ORT contrib ops, losslessly."""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np
import onnx
import onnx.parser
import pytest

from edgec.compiler.pipeline import PipelineResult, run_pipeline
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.targets.profile import TargetProfile
from edgec.targets.registry import get_target

RTOL = 1e-4
MS = "com.microsoft"
ZOO = ["resnet18", "resnet50", "mobilenetv2", "mobilenetv3-large", "densenet121", "efficientnet-b0",
       "bert-like", "digits-cnn", "mnist-resnet", "minilm"]
TRANSFORMERS = ["bert-like", "minilm"]


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _feeds_for(model: onnx.ModelProto, n: int = 2) -> list[dict[str, np.ndarray]]:
    """Seeded feeds from the graph's inputs: token ids, padded masks, N(0,1) floats."""
    rng = np.random.default_rng(0)
    feeds = []
    for i in range(n):
        feed = {}
        for vi in model.graph.input:
            tt = vi.type.tensor_type
            shape = [d.dim_value or 1 for d in tt.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if "mask" in vi.name:
                feed[vi.name] = np.ones(shape, dtype)
                feed[vi.name][..., shape[-1] - 8 * i:] = 0  # the second sample has padding
            elif np.issubdtype(dtype, np.integer):
                feed[vi.name] = rng.integers(0, 1000, shape).astype(dtype)
            else:
                feed[vi.name] = rng.standard_normal(shape).astype(dtype)
        feeds.append(feed)
    return feeds


def _fuse(proto: onnx.ModelProto, target: TargetProfile | None = None,
          feeds: list[dict[str, np.ndarray]] | None = None) -> PipelineResult:
    ctx = BuildContext(target or get_target("cpu-x86"), feeds if feeds is not None else _feeds_for(proto))
    return run_pipeline(proto, [create_pass("fuse", ctx)], ctx)


_W = ", ".join(f"{v:.3f}" for v in np.random.default_rng(1).standard_normal(108))
CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y)
  <float[4, 3, 3, 3] w = {WEIGHTS}, float[4] b = {0.1, -0.2, 0.3, 0.0},
   float[4] gamma = {1.5, 0.5, 2.0, 1.0}, float[4] beta = {0.1, 0.2, -0.3, 0.0},
   float[4] mean = {0.2, -0.1, 0.0, 0.4}, float[4] var = {0.9, 1.1, 0.5, 2.0}> {
    c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
    n = BatchNormalization<epsilon = 1e-5>(c, gamma, beta, mean, var)
    y = Relu(n)
}
""".replace("WEIGHTS", _W)


def test_conv_batchnorm_folds_into_one_conv():
    result = _fuse(onnx.parser.parse_model(CONV_BN))
    record = result.records[0]
    assert _ops(result.model) == {"Conv": 1, "Relu": 1}
    assert record.stats["bn_folded"] == 1
    assert record.max_rel_error <= RTOL


MATMUL_ADD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 3] y)
  <float[4, 3] w = {1., 2., 3., 4., 5., 6., 7., 8., 9., 1., 2., 3.}, float[3] b = {0.5, -1., 2.}> {
    m = MatMul(x, w)
    y = Add(m, b)
}
"""


def test_rank2_matmul_add_becomes_gemm():
    result = _fuse(onnx.parser.parse_model(MATMUL_ADD))
    assert _ops(result.model) == {"Gemm": 1}
    assert result.records[0].stats["gemm"] == 1
    assert result.records[0].max_rel_error <= RTOL


@functools.cache
def _zoo_proto(name: str) -> onnx.ModelProto:
    # The zoo builds and caches each export under $EDGEC_CACHE on first use.
    return onnx.load(str(get_zoo_model(name).onnx_path()))


@functools.cache
def _fused_zoo(name: str) -> PipelineResult:
    return _fuse(_zoo_proto(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_attention_and_skip_layernorm_fuse(name: str):
    result = _fused_zoo(name)
    ops = collections.Counter((n.domain, n.op_type) for n in result.model.graph.node)
    stats = result.records[0].stats
    assert ops[(MS, "Attention")] + ops[(MS, "MultiHeadAttention")] == 6
    assert ops[(MS, "SkipLayerNormalization")] >= 6
    assert stats["attention"] == 6
    # No unfused attention left: the only MatMuls are the 3 projection/FFN ones per layer.
    assert ops[("", "Softmax")] == 0
    assert result.records[0].max_rel_error <= RTOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_fuse_is_lossless_on_zoo_model(name: str):
    result = _fused_zoo(name)
    record = result.records[0]
    assert record.max_rel_error <= RTOL
    assert record.after["nodes"] <= record.before["nodes"]


def _without_contrib_ops(target: TargetProfile) -> TargetProfile:
    eps = tuple(dataclasses.replace(ep, contrib_ops=()) for ep in target.execution_providers)
    return dataclasses.replace(target, name=f"{target.name}-no-contrib", execution_providers=eps)


@pytest.mark.slow
def test_target_without_contrib_ops_gets_none():
    proto = _zoo_proto("bert-like")
    result = _fuse(proto, _without_contrib_ops(get_target("cpu-x86")))
    assert not [n for n in result.model.graph.node if n.domain == MS]
    skipped = {s["where"] for s in result.records[0].skips}
    assert {"fusion attention", "fusion skip_layer_norm"} <= skipped
    assert result.records[0].max_rel_error <= RTOL


@pytest.mark.slow
def test_ios_target_gets_only_its_contrib_ops():
    target = get_target("ios-arm64")
    result = _fuse(_zoo_proto("minilm"), target)
    used = {n.op_type for n in result.model.graph.node if n.domain == MS}
    assert used and used <= target.contrib_ops
    assert result.records[0].max_rel_error <= RTOL


SE_BLOCK = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) {
    axes = Constant<value = int64[2] {2, 3}>()
    m = ReduceMean<keepdims = 1>(x, axes)
    s = Sigmoid(m)
    y = Mul(x, s)
}
"""


def test_spatial_reduce_mean_becomes_global_average_pool():
    proto = onnx.parser.parse_model(SE_BLOCK)
    result = _fuse(proto)
    assert _ops(result.model) == {"GlobalAveragePool": 1, "Sigmoid": 1, "Mul": 1}
    assert result.records[0].stats["global_avg_pool"] == 1
    assert result.records[0].max_rel_error <= RTOL


def test_channel_reduce_mean_is_left_alone():
    proto = onnx.parser.parse_model(SE_BLOCK.replace("{2, 3}", "{1, 2}"))
    result = _fuse(proto)
    assert _ops(result.model)["ReduceMean"] == 1
    assert result.records[0].max_rel_error <= RTOL


def test_an_input_that_is_also_an_output_keeps_its_name_and_skips_the_optimizer():
    # onnxscript's optimizer renames such an input (x -> x_orig); fuse goes on without it and says so.
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["": 17]>
        g (float[2, 3] x) => (float[2, 3] x, float[2, 3] y) {
            y = Relu(x)
        }""")
    feeds = [{"x": np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)}]
    ctx = BuildContext(get_target("cpu-x86"), feeds)
    result = run_pipeline(model, [create_pass("fuse", ctx, {})], ctx)
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert [o.name for o in result.model.graph.output] == ["x", "y"]
    assert any("is a graph input itself" in s["reason"] for s in result.records[0].skips)
    assert result.records[0].max_rel_error == 0.0
