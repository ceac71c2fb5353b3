"""Lend a model with symbolic dims the concrete shapes of a calibration sample, for analyses that need them.

The channel analysis checks broadcasts (is this Mul's other operand one value per channel?) and widths
(which Reshape flattens channels?) on static shapes. A model exported with symbolic batch/height/width
has none, so every such check would fail and freeze its channel groups. At the first calibration sample's
shapes the answers are the ones the model gives at every size it runs at, so those shapes stand in while
the analysis and the rewrite run; the symbolic ones come back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import numpy as np
import onnx_ir as ir

from edgec.core.ir import to_proto
from edgec.core.stats import value_shapes


def _is_static(shape: ir.Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def shapes_at_sample(model: ir.Model, calibration: Sequence[Mapping[str, np.ndarray]]) -> dict[str, tuple[int, ...]]:
    """Value name -> its static shape at the first calibration sample's input shapes.

    Empty when no main-graph input has a symbolic dim or there is no calibration data.
    """
    graph = model.graph
    symbolic = [v.name for v in graph.inputs if v.shape is not None and not _is_static(v.shape)]
    if not symbolic or not calibration:
        return {}
    sample = calibration[0]
    at_sample = {name: tuple(sample[name].shape) for name in symbolic if name is not None and name in sample}
    shapes = value_shapes(to_proto(model), at_sample)
    # The filter keeps only all-int dims, which mypy cannot see through all().
    return {name: tuple(cast("list[int]", dims)) for name, dims in shapes.items()
            if dims and all(isinstance(d, int) and d >= 0 for d in dims)}


@contextlib.contextmanager
def sample_shapes(model: ir.Model, calibration: Sequence[Mapping[str, np.ndarray]]) -> Iterator[int]:
    """Within the block, main-graph values with symbolic shapes carry their shapes at the first sample.

    Yields how many values got a lent shape (0 when the model is static or there is no calibration data).
    On exit a value whose lent shape is untouched gets its symbolic shape back; one that a rewrite gave
    another shape (a pruned width) loses its shape, which ORT and the checker infer again.
    """
    shapes = shapes_at_sample(model, calibration)
    lent: list[tuple[ir.Value, ir.Shape | None, ir.Shape]] = []
    for value in [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]:
        dims = shapes.get(value.name or "")
        if dims is None or _is_static(value.shape):
            continue
        shape = ir.Shape(dims)
        lent.append((value, value.shape, shape))
        value.shape = shape
    try:
        yield len(lent)
    finally:
        for value, original, shape in lent:
            value.shape = original if value.shape == shape else None
