"""Concats whose inputs' ranges differ too much for one shared int8 scale, and what must stay float with them.

ORT's QDQ quantizer puts one Q/DQ pair, with one scale for the whole range, on a Concat's output. When the
inputs' ranges differ widely (a detector's output: box coordinates in pixels, 0-800, next to class
probabilities, 0-1) the small input gets a few quantization steps at most: yolo-det's class scores came
out one step wide. Such a Concat is left float, so that each input keeps the Q/DQ of its own range, and so
is every node downstream of it: any of them would quantize the mixed values on one scale again.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from edgec.core.ir import Feeds
from edgec.core.stats import value_types
from edgec.runtime.session import make_session, run

# Above this ratio of the widest input's span to the narrowest's, the narrowest gets fewer than 16 of the
# 256 uint8 steps.
MAX_RANGE_RATIO = 16.0
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16})


@dataclasses.dataclass(frozen=True)
class MixedConcat:
    """A Concat left float: its inputs' spans on the calibration feeds, their ratio, the nodes after it."""

    node: str
    ratio: float
    spans: dict[str, float]
    downstream: tuple[str, ...]


def _span(low: float, high: float) -> float:
    """The width a uint8 scale must cover: ORT's ranges always include 0."""
    return max(high, 0.0) - min(low, 0.0)


def _float_concat_inputs(proto: onnx.ModelProto) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each main-graph Concat's float inputs (constants included) by node name, and their element types."""
    if not any(node.op_type == "Concat" for node in proto.graph.node):
        return {}, {}  # spare the shape inference
    types = {name: elem for name, (_, elem) in value_types(proto).items() if elem in _FLOAT_TYPES}
    concats = {}
    for node in proto.graph.node:
        if node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
            names = [n for n in node.input if n in types]
            if len(names) > 1:
                concats[node.name] = names
    return concats, types


def input_ranges(proto: onnx.ModelProto, types: Mapping[str, int], feeds: Sequence[Feeds],
                 ) -> dict[str, tuple[float, float]]:
    """(min, max) over ``feeds`` of each value named in ``types`` (name -> ONNX element type), in one session."""
    names = list(types)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in types}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = {o.name for o in probe.graph.output}
    graph_inputs = {i.name for i in probe.graph.input}
    for name in names:
        if name not in outputs and name not in inits and name not in graph_inputs:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    session = make_session(probe.SerializeToString(), level="disabled", threads=1)
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    for feed in feeds:
        values = {**inits, **feed, **run(session, feed)}
        for name in names:
            value = np.asarray(values[name], dtype=np.float64)
            if value.size:
                low[name], high[name] = min(low[name], value.min()), max(high[name], value.max())
    return {n: (float(low[n]), float(high[n])) for n in names if np.isfinite(low[n])}


def downstream_nodes(proto: onnx.ModelProto, start: str) -> tuple[str, ...]:
    """Names of the main-graph nodes that read, directly or through others, the outputs of node ``start``."""
    readers = collections.defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            readers[name].append(node)
    first = next(n for n in proto.graph.node if n.name == start)
    seen: dict[str, None] = {}
    todo = list(first.output)
    while todo:
        for node in readers.get(todo.pop(), []):
            if node.name not in seen:
                seen[node.name] = None
                todo.extend(node.output)
    order = {n.name: i for i, n in enumerate(proto.graph.node)}
    return tuple(sorted(seen, key=order.__getitem__))


def mixed_range_concats(proto: onnx.ModelProto, feeds: Sequence[Feeds],
                        max_ratio: float = MAX_RANGE_RATIO) -> list[MixedConcat]:
    """The Concats (nodes must be named) whose inputs' spans differ more than ``max_ratio`` times on ``feeds``.

    Inputs that are 0 throughout (span 0) are left out of the ratio: 0 is exact on any scale.
    """
    concats, types = _float_concat_inputs(proto)
    if not concats or not np.isfinite(max_ratio):
        return []
    read = sorted({n for names in concats.values() for n in names})
    ranges = input_ranges(proto, {n: types[n] for n in read}, feeds)
    mixed = []
    for node, names in concats.items():
        spans = {n: _span(*ranges[n]) for n in names if n in ranges}
        widths = [s for s in spans.values() if s > 0]
        if len(widths) > 1 and max(widths) / min(widths) > max_ratio:
            mixed.append(MixedConcat(node, max(widths) / min(widths), spans, downstream_nodes(proto, node)))
    return mixed
