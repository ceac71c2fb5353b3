"""Depth-pruning graph edits: remove a block's span, and read stream activations on calibration feeds."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.core.ir import Feeds, clone, to_proto
from edgec.passes.depth.blocks import Block
from edgec.passes.depth.replaceme import LinearMap, apply_linear
from edgec.runtime.session import make_session


@contextlib.contextmanager
def quiet_ir() -> Iterator[None]:
    """Silence onnx_ir's INFO "Removed N unused nodes", logged once per trial edit (hundreds per pass)."""
    logger = logging.getLogger("onnx_ir.passes.common.unused_removal")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every named value of the main graph: inputs, initializers and node outputs."""
    found = {v.name: v for v in graph.inputs if v.name}
    found.update({name: v for name, v in graph.initializers.items()})
    for node in graph:
        found.update({v.name: v for v in node.outputs if v.name})
    return found


def remove_block(model: ir.Model, block: Block, linear: LinearMap | None = None) -> str:
    """Delete ``block``'s span; its output's readers get the entry (or ``linear`` of it). Returns how."""
    graph = model.graph
    values = values_by_name(graph)
    entry, exit_value = values[block.entry], values[block.exit]
    nodes = {n.name: n for n in graph}
    span = [nodes[name] for name in block.nodes]
    tag = f"replaceme_{block.exit}"
    how = "bypassed"
    if linear is not None:
        how = apply_linear(graph, entry, exit_value, span[-1], linear, tag)
    else:
        exit_value.replace_all_uses_with(entry)
    graph.remove(span, safe=True)
    common.RemoveUnusedNodesPass()(model)
    return how


def capture(model: ir.Model, names: Sequence[str], feeds: Sequence[Feeds]) -> dict[str, list[np.ndarray]]:
    """Activations of the values ``names`` (plus the graph outputs) on each feed, by name."""
    probe = clone(model)
    values = values_by_name(probe.graph)
    present = {v.name for v in probe.graph.outputs}
    for name in dict.fromkeys(names):
        if name not in present:
            probe.graph.outputs.append(values[name])
    session = make_session(to_proto(probe).SerializeToString(), level="basic", threads=1)
    wanted = [o.name for o in session.get_outputs()]
    out: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    for feed in feeds:
        for name, array in zip(wanted, session.run(wanted, feed), strict=True):
            out[name].append(array)
    return out


def output_names(model: ir.Model) -> list[str]:
    """The graph output names, in order."""
    return [v.name or "" for v in model.graph.outputs]
