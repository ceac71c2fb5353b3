"""Refuse, before ONNX Runtime allocates it, a tensor far bigger than the model and its inputs justify.

A 200-byte model can ask for terabytes: a ConstantOfShape, Expand, Tile or Range whose sizes are
constants. ORT would try to allocate it (and on a host that overcommits memory, touch it until the
kernel kills the process). Shape inference with data propagation knows those sizes statically, so
each value's size at the calibration sample's input shapes is checked first: a tensor may take at
most ``FACTOR`` times the model plus one sample, and never less than ``FLOOR`` is allowed (a large
image's activations legitimately dwarf a small model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from edgec.compiler.analysis import value_shapes
from edgec.compiler.errors import UnsupportedOpError

FACTOR = 64
FLOOR = 1 << 30


def check_tensor_sizes(model: onnx.ModelProto, sample: Mapping[str, Any], source: str) -> None:
    """UnsupportedOpError naming the node whose output, at ``sample``'s shapes, would be too big."""
    input_shapes = {name: tuple(np.shape(v)) for name, v in sample.items() if hasattr(v, "shape")}
    sample_bytes = sum(int(getattr(v, "nbytes", 0)) for v in sample.values())
    limit = max(FLOOR, FACTOR * (model.ByteSize() + sample_bytes))
    # The sizes are what the nodes compute: a graph output's declared shape (maybe wrong) is left out.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for output in probe.graph.output:
        output.type.tensor_type.ClearField("shape")
    shapes = value_shapes(probe, input_shapes)
    itemsize = _itemsizes(model)
    for node in _all_nodes(model.graph):
        for name in node.output:
            dims = shapes.get(name)
            if not dims or any(d is None or d < 0 for d in dims):
                continue
            nbytes = math.prod(dims) * itemsize.get(name, 4)
            if nbytes > limit:
                raise UnsupportedOpError(
                    f"{source}: node {node.name or node.op_type!r} ({node.op_type}) would make a tensor of shape "
                    f"{list(dims)} ({nbytes / 2**30:.3g} GiB), over the {limit / 2**30:.3g} GiB this model and "
                    "its inputs can need; refusing to allocate it")


def _itemsizes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes per element of each typed value (after shape inference), default 4."""
    sizes: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - sizes are a bound: an unknown type counts as 4 bytes
        return sizes
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        elem = vi.type.tensor_type.elem_type
        if elem:
            try:
                sizes[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize
            except (KeyError, TypeError):
                continue
    return sizes


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)
