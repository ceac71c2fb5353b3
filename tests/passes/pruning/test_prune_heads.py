"""Attention-head pruning (passes/pruning/heads.py): matching, exactness, sizes, fusion after pruning, accuracy."""

from __future__ import annotations

import collections
import functools

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnx_ir.passes.common as common
import pytest
from helpers import outputs

from edgec.compiler.pipeline import run_pipeline
from edgec.core.stats import model_stats
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.pruning.heads import (
    AttentionBlock,
    find_attention_blocks,
    head_importance,
    heads_to_keep,
    prune_heads,
)
from edgec.runtime.session import compare_outputs
from edgec.targets.registry import get_target

TRANSFORMERS = ["bert-like", "minilm"]
LAYERS, HEADS, HEAD_DIM, HIDDEN = 6, 12, 32, 384
# A zeroed head adds exact zeros; only the summation order of the shorter matmuls differs after pruning.
ZERO_RTOL = 1e-5
FUSE_RTOL = 1e-4  # the fuse pass's own tolerance (fused kernels sum in another order)


@functools.cache
def _proto(name: str) -> bytes:
    return onnx.load(str(get_zoo_model(name).onnx_path())).SerializeToString()


def _ir(source: str | onnx.ModelProto) -> ir.Model:
    proto = source if isinstance(source, onnx.ModelProto) else onnx.load_from_string(_proto(source))
    model = ir.serde.deserialize_model(proto)
    common.ShapeInferencePass()(model)
    return model


def _blocks(model: ir.Model) -> list[AttentionBlock]:
    blocks, skipped = find_attention_blocks(model)
    assert not skipped, skipped
    return blocks


def _set_const(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.Tensor(array, name=value.name)


def _zero_dropped_heads(blocks: list[AttentionBlock], keep: dict[str, list[int]]) -> None:
    """Zero each dropped head's V columns (weight and bias) and output-projection rows: it then adds exactly 0.

    (Zeroing Q/K instead would make its softmax uniform, not zero.)
    """
    for block in blocks:
        dropped = [h for h in range(block.num_heads) if h not in keep[block.name]]
        cols = np.concatenate([np.arange(h * block.head_dim, (h + 1) * block.head_dim) for h in dropped])
        v = block.values
        for value, axis in [(v.matmul.inputs[1], 1), (block.out_proj.inputs[1], 0)]:
            array = value.const_value.numpy().copy()
            np.put_along_axis(array, np.expand_dims(cols, 1 - axis), 0.0, axis)
            _set_const(value, array)
        bias = v.bias_add.inputs[v.bias_index]
        array = bias.const_value.numpy().copy()
        array[cols] = 0.0
        _set_const(bias, array)


# Two heads of size 4 over 4 tokens of width 8. Both Reshapes spell the head count, as the eager export does.
TINY = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 4, 8] x, float[MASK] mask) => (float[1, 4, 8] y)
  <float[8, 8] wq = {WQ}, float[8] bq = {BQ}, float[8, 8] wk = {WK}, float[8] bk = {BK},
   float[8, 8] wv = {WV}, float[8] bv = {BV}, float[8, 8] wo = {WO}, float[8] bo = {BO},
   int64[4] split = {1, 4, 2, 4}, int64[3] merge = {1, 4, 8}, float scale = {0.5}> {
    q0 = MatMul(x, wq)
    q1 = Add(q0, bq)
    q2 = Reshape(q1, split)
    q = Transpose<perm = [0, 2, 1, 3]>(q2)
    k0 = MatMul(x, wk)
    k1 = Add(bk, k0)
    k2 = Reshape(k1, split)
    kt = Transpose<perm = [0, 2, 3, 1]>(k2)
    v0 = MatMul(x, wv)
    v1 = Add(v0, bv)
    v2 = Reshape(v1, split)
    v = Transpose<perm = [0, 2, 1, 3]>(v2)
    s0 = MatMul(q, kt)
    s1 = Mul(s0, scale)
    s2 = Add(s1, mask)
    p = Softmax<axis = -1>(s2)
    c0 = MatMul(p, v)
    c1 = Transpose<perm = [MERGE_PERM]>(c0)
    c2 = Reshape(c1, merge)
    o0 = MatMul(c2, wo)
    y = Add(o0, bo)
}
"""


def _tiny(mask_shape: str = "1, 1, 4, 4", merge_perm: str = "0, 2, 1, 3") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    text = TINY.replace("MASK", mask_shape).replace("MERGE_PERM", merge_perm)
    for name, size in [("WQ", 64), ("WK", 64), ("WV", 64), ("WO", 64), ("BQ", 8), ("BK", 8), ("BV", 8), ("BO", 8)]:
        text = text.replace("{" + name + "}", "{" + ", ".join(f"{v:.4f}" for v in rng.standard_normal(size)) + "}")
    return onnx.parser.parse_model(text)


def _tiny_feeds(mask_shape: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 4, 8)).astype(np.float32),
             "mask": rng.standard_normal(mask_shape).astype(np.float32)} for _ in range(2)]


def test_tiny_attention_matches_and_both_head_counts_are_rewritten():
    model = _ir(_tiny())
    [block] = _blocks(model)
    assert (block.num_heads, block.head_dim, block.out_proj.outputs[0].name) == (2, 4, "o0")
    assert {p.matmul.outputs[0].name for p in block.queries_keys} == {"q0", "k0"}
    assert block.values.matmul.outputs[0].name == "v0"
    assert {f.node.outputs[0].name: f.axes for f in block.shape_fixes} == {"q2": (2,), "k2": (2,), "v2": (2,),
                                                                           "c2": (2,)}
    feeds = _tiny_feeds((1, 1, 4, 4))
    keep = {block.name: [1]}
    _zero_dropped_heads([block], keep)
    zeroed = outputs(model, feeds, full_check=True)
    assert prune_heads(model, [block], keep) == 1
    shapes = {n.outputs[0].name: n.inputs[1].const_value.numpy().tolist() for n in model.graph
              if n.op_type == "Reshape"}
    assert shapes == {"q2": [1, 4, 1, 4], "k2": [1, 4, 1, 4], "v2": [1, 4, 1, 4], "c2": [1, 4, 4]}
    for err in compare_outputs(zeroed, outputs(model, feeds, full_check=True)):
        assert err.max_rel <= ZERO_RTOL, err


@pytest.mark.parametrize(("mask_shape", "merge_perm", "reason"), [
    ("1, 2, 4, 4", "0, 2, 1, 3", "mask varies along the head axis"),
    # Merging as (d, H) instead of (H, d): the output projection's rows are not grouped by head.
    ("1, 1, 4, 4", "0, 2, 3, 1", "o0: its input's last axis is not (heads, head dim)"),
])
def test_unprunable_block_is_skipped_with_a_reason(mask_shape, merge_perm, reason):
    model = _ir(_tiny(mask_shape, merge_perm))
    blocks, skipped = find_attention_blocks(model)
    assert blocks == []
    [(where, why)] = skipped
    assert where == "p"  # the unnamed Softmax, by its output
    assert reason in why


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_every_zoo_attention_block_is_found(name):
    blocks = _blocks(_ir(name))
    assert [(b.num_heads, b.head_dim) for b in blocks] == [(HEADS, HEAD_DIM)] * LAYERS
    outs = [b.out_proj for b in blocks]
    assert len(set(outs)) == LAYERS
    # The SDPA export splits with -1 heads and spells them once, in K's [1, H, d, S] reshape.
    assert all(len(b.shape_fixes) == 1 for b in blocks)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_keeping_all_heads_is_bit_exact(name):
    model = _ir(name)
    feeds = get_zoo_model(name).calibration(2)
    before = outputs(model, feeds, full_check=True)
    blocks = _blocks(model)
    assert prune_heads(model, blocks, {b.name: list(range(b.num_heads)) for b in blocks}) == 0
    for ref, got in zip(before, outputs(model, feeds, full_check=True), strict=True):
        for key in ref:
            np.testing.assert_array_equal(ref[key], got[key])


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_pruning_zeroed_heads_changes_nothing(name):
    model = _ir(name)
    feeds = get_zoo_model(name).calibration(2)
    blocks = _blocks(model)
    # A different set of heads in each layer, so a mix-up between layers or heads would show.
    keep = {b.name: sorted({(3 * i + 5 * j) % HEADS for j in range(7)}) for i, b in enumerate(blocks)}
    assert all(len(k) == 7 for k in keep.values())
    _zero_dropped_heads(blocks, keep)
    zeroed = outputs(model, feeds, full_check=True)
    assert prune_heads(model, blocks, keep) == LAYERS * 5
    for err in compare_outputs(zeroed, outputs(model, feeds, full_check=True)):
        assert err.max_rel <= ZERO_RTOL, (name, err)


def _float_params(proto: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def _matmul_flops(proto: onnx.ModelProto) -> int:
    return sum(c.flops for c in model_stats(proto).node_costs if c.op_type == "MatMul")


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_pruned_model_is_smaller_by_the_dropped_heads(name, ratio):
    model = _ir(name)
    seq = get_zoo_model(name).input_shapes["input_ids"][1]
    before = ir.serde.serialize_model(model)
    blocks = _blocks(model)
    keep = heads_to_keep(head_importance(model, blocks), ratio)
    dropped = prune_heads(model, blocks, keep)
    assert dropped == LAYERS * int(HEADS * ratio)
    after = ir.serde.serialize_model(model)
    outputs(model, get_zoo_model(name).calibration(1), full_check=True)  # passes the full checker and runs in ORT
    # Per head: d columns of Q, K, V (weights and biases) and d rows of the output projection.
    assert _float_params(before) - _float_params(after) == dropped * (4 * HIDDEN * HEAD_DIM + 3 * HEAD_DIM)
    # Per head: the four projections over every token, and its scores and weighted sum of values.
    per_head = 2 * seq * HIDDEN * HEAD_DIM * 4 + 2 * seq * seq * HEAD_DIM * 2
    assert _matmul_flops(before) - _matmul_flops(after) == dropped * per_head
    assert model_stats(after).flops < model_stats(before).flops


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_pruned_attention_still_fuses(name):
    model = _ir(name)
    blocks = _blocks(model)
    prune_heads(model, blocks, heads_to_keep(head_importance(model, blocks), 0.25))
    ctx = BuildContext(get_target("cpu-x86"), get_zoo_model(name).calibration(2))
    result = run_pipeline(ir.serde.serialize_model(model), [create_pass("fuse", ctx)], ctx)
    attention = [n for n in result.model.graph.node if (n.domain, n.op_type) == ("com.microsoft", "Attention")]
    assert len(attention) == LAYERS
    kept = HEADS - int(HEADS * 0.25)
    for node in attention:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["num_heads"] == kept
        assert list(attrs["qkv_hidden_sizes"]) == [kept * HEAD_DIM] * 3
    ops = collections.Counter(n.op_type for n in result.model.graph.node)
    assert ops["Softmax"] == 0
    assert result.records[0].max_rel_error <= FUSE_RTOL


@pytest.mark.slow
def test_activation_importance_keeps_minilm_closer_than_weights():
    zoo = get_zoo_model("minilm")
    feeds = zoo.calibration(32)
    metric = {}
    for ratio in (0.25, 0.5):
        for kind in ("weight", "activation"):
            model = _ir("minilm")
            blocks = _blocks(model)
            scores = head_importance(model, blocks, feeds if kind == "activation" else None)
            prune_heads(model, blocks, heads_to_keep(scores, ratio))
            metric[ratio, kind] = zoo.evaluate(ir.serde.serialize_model(model).SerializeToString())["mean_cosine"]
    # Measured: 25% 0.892 (weight) / 0.940 (activation), 50% 0.780 / 0.830; margins leave room for ORT versions.
    for ratio in (0.25, 0.5):
        assert metric[ratio, "activation"] > metric[ratio, "weight"] + 0.02, metric
    assert metric[0.25, "activation"] >= 0.92, metric
    assert metric[0.5, "activation"] >= 0.80, metric


@pytest.mark.slow
def test_eager_attention_export_prunes_exactly_too(tmp_path):
    # The eager export transposes K straight to [B, H, d, S] where SDPA's goes through [B*H, S, d].
    import torch

    from edgec.models._export import export_onnx
    from edgec.models.transformer import bert_like

    feeds = get_zoo_model("bert-like").calibration(2)
    path = tmp_path / "eager.onnx"
    export_onnx(bert_like(attn_implementation="eager"), tuple(torch.from_numpy(feeds[0][k]) for k in feeds[0]),
                path, list(feeds[0]), ["last_hidden_state"])
    model = _ir(onnx.load(str(path)))
    blocks = _blocks(model)
    assert [(b.num_heads, b.head_dim, len(b.shape_fixes)) for b in blocks] == [(HEADS, HEAD_DIM, 0)] * LAYERS
    keep = heads_to_keep(head_importance(model, blocks), 0.5)
    _zero_dropped_heads(blocks, keep)
    zeroed = outputs(model, feeds, full_check=True)
    assert prune_heads(model, blocks, keep) == LAYERS * HEADS // 2
    for err in compare_outputs(zeroed, outputs(model, feeds, full_check=True)):
        assert err.max_rel <= ZERO_RTOL, err
