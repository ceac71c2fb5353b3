"""Small real ONNX models and feeds shared by the runtime tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def build_tiny_classifier(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> Add -> Softmax, batch dim symbolic.

    The input is called ``input.1`` (as torch exports name it) so generated app code must sanitize it.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv.b"),
        numpy_helper.from_array(rng.standard_normal((8, 10)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc.w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "fc.b"], ["logits"], name="fc_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def tiny_model() -> onnx.ModelProto:
    return build_tiny_classifier()


@pytest.fixture(scope="session")
def tiny_feeds() -> dict[str, np.ndarray]:
    return {"input.1": np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)}
