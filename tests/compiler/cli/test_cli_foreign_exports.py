"""What other exporters write that edgec's own exports never do: wrong declared shapes, outer-scope
captures in If bodies, identities of graph outputs. Each builds and keeps the model's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgec.compiler.cli import cli
from edgec.compiler.frontend.normalize import drop_contradicted_output_shapes
from edgec.runtime.session import compare_outputs


def _run(model: str | bytes, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def _wrongly_declared() -> onnx.ModelProto:
    """y = Reshape(x, [dim0 * dim1, -1]) computed from Shape(x), declared [1, seqlen] (ddddocr's mistake).

    onnxscript's rule that materializes a Reshape's target shape from its output's declared shape would
    turn the shape into [1, -1]: same values, another shape.
    """
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["d0"]), helper.make_node("Gather", ["s", "i1"], ["d1"]),
             helper.make_node("Mul", ["d0", "d1"], ["rows"]),
             helper.make_node("Concat", ["rows", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [helper.make_tensor("i0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("i1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", 1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_declared_output_shape_the_model_contradicts_is_dropped():
    model = _wrongly_declared()
    (y,) = _run(model.SerializeToString(), {"x": np.ones((4, 1, 6), np.float32)})
    assert y.shape == (4, 6)
    notes = drop_contradicted_output_shapes(model, {"y": y})
    assert notes == ["output y is declared 1xseqlen but the model computes 4x6: the declared shape was dropped"]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims in ([], [None, None], [4, 6])  # unknown, or inferred again: never the declared 1


def test_the_bundle_keeps_the_output_shape_the_model_computes(runner, tmp_path):
    path = tmp_path / "declared.onnx"
    onnx.save(_wrongly_declared(), str(path))
    calib = tmp_path / "c.npz"
    x = np.random.default_rng(0).random((4, 1, 6), dtype=np.float32)
    np.savez(calib, x=x)
    out = tmp_path / "b"
    result = runner.invoke(cli, ["build", str(path), "--target", "cpu-x86", "--passes", "cleanup,fuse",
                                 "--calib", str(calib), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    (want,), (got,) = _run(str(path), {"x": x}), _run(str(out / "model.onnx"), {"x": x})
    assert got.shape == want.shape and np.array_equal(got, want)


def test_an_output_whose_shape_changed_is_infinitely_wrong():
    a = np.arange(6, dtype=np.float32)
    (error,) = compare_outputs([{"y": a.reshape(2, 3)}], [{"y": a.reshape(1, 6)}])
    assert error.max_rel == float("inf") and error.cosine == 0.0


def test_cleanup_keeps_an_if_branch_that_returns_an_outer_value_through_an_identity(runner, tmp_path):
    # silero-vad's If bodies end in Identity(outer value); eliminating it leaves a body output no node makes.
    outer = helper.make_node("Relu", ["x"], ["r"])
    then = helper.make_graph([helper.make_node("Identity", ["r"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    branch = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    graph = helper.make_graph([outer, branch], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                                     helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.array([[[-1, 2, -3, 4]], [[5, -6, 7, -8]]], np.float32), cond=np.array([True, False]))
    out = tmp_path / "b"
    result = runner.invoke(cli, ["build", str(path), "--target", "cpu-x86", "--passes", "cleanup", "--calib",
                                 str(calib), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)
    x = np.array([[-1, 2, -3, 4]], np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        assert np.array_equal(_run(str(out / "model.onnx"), feeds)[0], _run(str(path), feeds)[0])


def test_nan_where_the_reference_has_nan_agrees_and_any_other_nan_differs():
    ref = {"y": np.array([1.0, np.nan, np.inf, 2.0], np.float32)}
    (same,) = compare_outputs([ref], [{"y": np.array([1.0, np.nan, np.inf, 2.0], np.float32)}])
    assert same.max_rel == 0.0 and same.cosine == pytest.approx(1.0)
    (new_nan,) = compare_outputs([ref], [{"y": np.array([1.0, np.nan, np.inf, np.nan], np.float32)}])
    assert new_nan.max_rel == float("inf") and new_nan.cosine == 0.0


def _matmul_graph(name: str, out: str, k: int = 8) -> onnx.GraphProto:
    w = helper.make_tensor(f"w_{name}", TensorProto.FLOAT, [k, k], np.ones(k * k, np.float32).tolist())
    return helper.make_graph([helper.make_node("MatMul", ["x", f"w_{name}"], [out], name=f"mm_{name}")], name, [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", k])], [w])


def test_flops_count_the_costlier_if_branch_at_the_calibration_shape():
    from edgec.core.stats import model_stats

    then = _matmul_graph("then", "t")
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="relu")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", 8])])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then,
                                                else_branch=other)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert model_stats(model).flops == 0  # symbolic rows: no shape, no count
    stats = model_stats(model, {"x": (4, 8), "cond": ()})
    assert stats.flops == 2 * 4 * 8 * 8  # the MatMul branch (512), not the Relu one (32), and not both
    assert "branch/then_branch/mm_then" in [c.name for c in stats.node_costs]
    assert stats.params == 64  # the branch's own weight
