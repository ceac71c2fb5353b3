"""Small IR helpers every pass family shares: constants, names, inputs, attributes, static shapes, new initializers."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper


def constant_value(value: ir.Value | None) -> np.ndarray | None:
    """The array a value always holds: an initializer's or a Constant node's output's, else None.

    Every Constant form counts (``value``, ``value_float(s)``, ``value_int(s)``, ``value_string(s)``), as
    ``onnx_ir.convenience.get_const_tensor`` reads them; it raises ValueError on a malformed Constant node.
    """
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def initializer_value(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer (a value holding ``const_value``); None otherwise, also for a Constant's output.

    For rewrites that then write the new array back into ``const_value``: a Constant node's output has none
    to write, so those analyses must not take it for a parameter.
    """
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def attribute(node: ir.Node, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of an IR node, or ``default`` when the node does not set it."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def proto_attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of a NodeProto, or ``default`` when the node does not set it."""
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def static_shape(value: ir.Value | None) -> list[int] | None:
    """The dims of a value when all are known ints, else None."""
    if value is None or value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return dims if len(dims) == len(value.shape) else None


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register a new initializer ``name`` holding ``array``, with its shape and element type declared."""
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(
        array.dtype)), const_value=ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value


def name_of(item: ir.Value | ir.Node) -> str:
    """The name of a value or node of a graph: onnx_ir's name authority names every one a graph holds."""
    assert item.name is not None, f"{item!r} has no name: it is in no graph"
    return item.name


def input_of(node: ir.Node, index: int) -> ir.Value:
    """Input ``index`` of ``node``, for an input the caller knows is present (required, or checked before)."""
    value = node.inputs[index]
    assert value is not None, f"{node.name}: input {index} is missing"
    return value


def const_array(value: ir.Value | None) -> np.ndarray:
    """The array of an initializer the caller knows holds one (``initializer_value`` when it may not)."""
    assert value is not None and value.const_value is not None, f"{value!r} is not an initializer"
    return value.const_value.numpy()
