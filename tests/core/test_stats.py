"""Shapes and FLOPs through ONNX Runtime's own ops (com.microsoft), which ONNX's shape inference does not know."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgec.core.stats import model_stats, value_shapes


def _conv_act_conv(fused: bool) -> onnx.ModelProto:
    """Conv -> SiLU -> Conv, the SiLU as x * Sigmoid(x) or as ORT's QuickGelu (what its fusions write)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "w2")]
    conv1 = helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1])
    if fused:
        act = [helper.make_node("QuickGelu", ["c1"], ["a"], domain="com.microsoft", alpha=1.0)]
    else:
        act = [helper.make_node("Sigmoid", ["c1"], ["s"]), helper.make_node("Mul", ["c1", "s"], ["a"])]
    conv2 = helper.make_node("Conv", ["a", "w2"], ["y"])
    graph = helper.make_graph([conv1, *act, conv2], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_shapes_pass_through_an_ort_contrib_op():
    model = _conv_act_conv(fused=True)
    shapes = value_shapes(model)
    # ORT runs the model, and its output has the shape the statistics infer.
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 3, 32, 32), np.float32)})
    assert shapes["a"] == [1, 16, 32, 32]
    assert shapes["y"] == list(y.shape) == [1, 8, 32, 32]


def test_flops_of_the_conv_after_a_contrib_op_are_counted():
    plain, fused = model_stats(_conv_act_conv(fused=False)), model_stats(_conv_act_conv(fused=True))
    second = {c.name or c.op_type: c.flops for c in fused.node_costs if c.op_type == "Conv"}
    assert min(second.values()) == 2 * 8 * 16 * 32 * 32  # the 1x1 Conv after QuickGelu: 2 x Cout x Cin x H x W
    convs = [sum(c.flops for c in s.node_costs if c.op_type == "Conv") for s in (plain, fused)]
    assert convs[0] == convs[1] > 0
