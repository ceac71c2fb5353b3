"""fp8, fp4, fp16 and int4 passes: checked against onnx's ReferenceEvaluator and ORT on real models."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgec.compiler.pipeline import run_pipeline
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.quant.lowbit import fp4_round
from edgec.runtime.session import make_session, run
from edgec.targets.registry import get_target


def _run(name: str, pass_name: str, options: dict, target: str = "cuda"):
    zoo = get_zoo_model(name)
    ctx = BuildContext(get_target(target), zoo.calibration(8))
    return run_pipeline(onnx.load(str(zoo.onnx_path())), [create_pass(pass_name, ctx, options)], ctx), zoo


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
def test_fp8_ort_emulation_matches_reference_evaluator(fmt):
    result, zoo = _run("digits-cnn", "fp8", {"format": fmt})
    model = result.model
    assert any(t.data_type in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2) for t in model.graph.initializer)
    assert result.records[0].stats["opset_upgraded"] == "18 -> 19"
    feed = zoo.calibration(1)[0]
    got = run(make_session(model.SerializeToString(), level="disabled"), feed)["logits"]
    want = ReferenceEvaluator(model).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert result.records[0].min_cosine > (0.99 if fmt == "e4m3fn" else 0.98)


def test_fp4_rounding_matches_reference_evaluator():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    block = 16
    blocks = np.abs(w.reshape(8, -1, block)).max(-1) / 6.0
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s"], ["q"], axis=1, block_size=block,
                          output_dtype=TensorProto.FLOAT4E2M1),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=block)],
        "fp4", [helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, w.shape)],
        [numpy_helper.from_array(blocks.astype(np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    want = ReferenceEvaluator(model).run(None, {"w": w})[0]
    np.testing.assert_allclose(fp4_round(w, block), want, rtol=1e-6, atol=1e-7)
    grid = np.unique(np.abs(fp4_round(w, block).reshape(8, -1, block) / blocks[..., None]).round(5))
    assert set(grid) <= {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}


def test_fp4_pass_simulates_and_says_so():
    result, zoo = _run("mnist-resnet", "fp4", {"block_size": 32}, target="cpu-x86")
    record = result.records[0]
    assert record.stats["simulated"] and "FLOAT4E2M1" in record.stats["note"]
    assert record.stats["weights"] > 0 and 0.95 < record.min_cosine < 1.0
    before = zoo.evaluate(onnx.load(str(zoo.onnx_path())).SerializeToString())["accuracy"]
    assert zoo.evaluate(result.model.SerializeToString())["accuracy"] >= before - 0.02


def test_fp16_for_cuda_keeps_fp32_io_and_passes_checker():
    result, _ = _run("mnist-resnet", "fp16", {"keep_ops": ["Softmax"]})
    model = result.model
    onnx.checker.check_model(model)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert result.records[0].min_cosine > 0.9999
    assert not result.records[0].skips  # cuda prefers fp16: no warning


def test_fp16_with_an_unused_float_initializer_passes_the_full_checker():
    # ORT's converter declares every float initializer float16 in value_info, the unused one too, which it
    # leaves float32: the full checker then saw two types for one value.
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    unused = numpy_helper.from_array(np.ones(3, dtype=np.float32), "unused")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight, unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.arange(4, dtype=np.float32).reshape(1, 4)}]
    ctx = BuildContext(get_target("cuda"), feeds)
    result = run_pipeline(model, [create_pass("fp16", ctx, {})], ctx)
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_allclose(run(make_session(result.model.SerializeToString()), feeds[0])["y"], feeds[0]["x"])


def test_fp16_on_cpu_target_warns():
    result, _ = _run("digits-cnn", "fp16", {}, target="cpu-x86")
    assert any("not faster" in s["reason"] for s in result.records[0].skips)


def test_int4_matmulnbits_on_bert_like():
    result, _ = _run("bert-like", "quantize-int4", {"block_size": 32}, target="cpu-x86")
    record = result.records[0]
    assert record.stats["matmulnbits"] > 0
    assert sum(n.op_type == "MatMulNBits" for n in result.model.graph.node) == record.stats["matmulnbits"]
    assert record.min_cosine > 0.99
    assert record.after["bytes"] < 0.75 * record.before["bytes"]


def test_ml_dtypes_has_e2m1():
    # fp4 relies on ml_dtypes' round-to-nearest-even cast onto the E2M1 grid
    assert float(np.float32(2.5).astype(ml_dtypes.float4_e2m1fn)) == 2.0
