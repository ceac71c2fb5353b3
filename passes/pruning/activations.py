"""Intermediate values of a model on calibration feeds, read by exposing them as extra graph outputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir
from onnx import helper

from edgec.core.ir import to_proto
from edgec.runtime.session import make_session


def capture_values(model: ir.Model, names: list[str], feeds: Sequence[Mapping[str, np.ndarray]],
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The values ``names`` of ``model`` on each feed (exposed as extra graph outputs)."""
    proto = to_proto(model)
    present = {o.name for o in proto.graph.output}
    elem = {v.name: v.dtype for n in model.graph for v in (*n.inputs, *n.outputs)
            if v is not None and v.dtype is not None}
    for name in dict.fromkeys(names):
        if name not in present:
            dtype = elem.get(name, ir.DataType.FLOAT)
            proto.graph.output.append(helper.make_tensor_value_info(name, int(dtype), None))
    session = make_session(proto.SerializeToString(), level="basic")
    for feed in feeds:
        yield dict(zip(names, session.run(names, feed), strict=True))
