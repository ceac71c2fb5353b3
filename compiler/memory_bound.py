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

from edgec.core.errors import UnsupportedOpError
from edgec.core.stats import all_nodes, value_types

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
    types = value_types(probe, input_shapes)
    for node in all_nodes(model.graph):
        for name in node.output:
            dims, elem_type = types.get(name, ([], 0))
            if not dims or any(d is None or d < 0 for d in dims):
                continue
            nbytes = math.prod(dims) * _itemsize(elem_type)
            if nbytes > limit:
                raise UnsupportedOpError(
                    f"{source}: node {node.name or node.op_type!r} ({node.op_type}) would make a tensor of shape "
                    f"{list(dims)} ({nbytes / 2**30:.3g} GiB), over the {limit / 2**30:.3g} GiB this model and "
                    "its inputs can need; refusing to allocate it")


def _itemsize(elem_type: int) -> int:
    """Bytes per element of an ONNX element type; 4 when unknown (the bound stays an estimate)."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 4
