"""A tensor far beyond what the model and its inputs justify is refused before ORT allocates it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.memory_bound import check_tensor_sizes
from edgec.core.errors import UnsupportedOpError


def _fill(shape: list[int]):
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Add", ["x", "s"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [numpy_helper.from_array(np.array(shape, np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_terabyte_constant_of_shape_is_refused_naming_the_node():
    with pytest.raises(UnsupportedOpError, match=r"node 'fill' \(ConstantOfShape\) would make a tensor of shape "
                                                 r"\[1048576, 1048576\] \(4.1e\+03 GiB\)"):
        check_tensor_sizes(_fill([1 << 20, 1 << 20]), {"x": np.zeros((2, 4), np.float32)}, "model.onnx")


def test_sizes_follow_the_sample_and_a_modest_tensor_passes():
    check_tensor_sizes(_fill([1 << 10, 1 << 10]), {"x": np.zeros((2, 4), np.float32)}, "model.onnx")  # 4 MiB
