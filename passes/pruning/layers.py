"""Per-layer widths: the channel groups a search can give a ratio each, and how node work follows them.

A *layer* here is a channel group of the analysis that can be pruned (not frozen, computed by a
producer, read by some consumer), named after its first producer node: the name a user sees in the
graph and the key of ``prune-channels``'s ``groups`` option. Producers whose outputs are added (the
convs feeding one residual stream) compute one group and share its ratio; the inputs of a channel
Concat stay groups of their own.
"""

from __future__ import annotations

import onnx_ir as ir

from edgec.passes.base import LayerLevels, WorkFactor
from edgec.passes.pruning.plan import group_multiples, round_keep
from edgec.passes.pruning.records import ChannelGraph, Layout

# The ratios a layer may take: past 0.8 recovery has too little left to refit.
LEVELS = tuple(round(0.1 * k, 1) for k in range(9))


def group_names(cg: ChannelGraph) -> dict[int, str]:
    """Prunable group -> its name, in producer order.

    The name is the group's first producer node, with ``#k`` for the k-th further group one node computes
    (the halves of a Conv whose output a Split divides).
    """
    frozen = cg.frozen_groups()
    read = {cg.group(s) for c in cg.consumers for s in c.layout.pieces}
    names: dict[int, str] = {}
    per_node: dict[str, int] = {}
    for producer in cg.producers:
        for space in producer.spaces:
            g = cg.group(space)
            if g not in frozen and g in read and g not in names:
                k = per_node.get(producer.node, 0)
                per_node[producer.node] = k + 1
                names[g] = producer.node if k == 0 else f"{producer.node}#{k}"
    return names


def _factor(cg: ChannelGraph, layout: Layout, index: dict[int, int]) -> WorkFactor:
    """A layout's channels as (unchanged share, (layer, share) pairs)."""
    width = max(cg.width(layout), 1)
    fixed, shares = 0.0, dict[int, float]()
    for space in layout.pieces:
        share = cg.space_sizes[space] / width
        layer = index.get(cg.group(space))
        if layer is None:
            fixed += share
        else:
            shares[layer] = shares.get(layer, 0.0) + share
    return fixed, tuple(sorted(shares.items()))


def layer_levels(model: ir.Model, cg: ChannelGraph, multiple: int, levels: tuple[float, ...],
                 rounding: str) -> LayerLevels:
    """The prunable groups of ``cg`` as layers, each node's work and traffic as factors over them.

    A weighted consumer (Conv/Gemm/MatMul summing over its input channels) scales with the kept share
    of what it reads times that of what it writes; every other node with tracked channels (BatchNorm,
    activations, depthwise convs, adds) with what it writes, or reads when its output is untracked.
    """
    names = group_names(cg)
    multiples = group_multiples(cg, multiple)
    # the spaces of a group index the same channels; a group its channel multiple never lets shrink is left out
    kept_of = {g: tuple(round_keep(cg.space_sizes[g], level, multiples[g], rounding) / cg.space_sizes[g]
                        for level in levels) for g in names}
    order = [g for g in names if min(kept_of[g]) < 1.0]
    index = {g: i for i, g in enumerate(order)}
    sizes = [cg.space_sizes[g] for g in order]
    kept = tuple(kept_of[g] for g in order)
    consumers = {c.node: c for c in cg.consumers}
    scaling: dict[str, tuple[WorkFactor, ...]] = {}
    traffic: dict[str, WorkFactor] = {}
    for node in model.graph:
        name = node.name or ""  # named by the pass before the analysis
        written = cg.layouts.get(node.outputs[0].name or "") if node.outputs else None
        read = consumers[name].layout if name in consumers else None
        if read is None and written is None:
            read = next((cg.layouts[v.name] for v in node.inputs if v is not None and v.name in cg.layouts), None)
        factors = [_factor(cg, layout, index) for layout in (read, written) if layout is not None]
        factors = [f for f in factors if f[1]]
        if factors:
            scaling[name] = tuple(factors)
        if written is not None and (out := _factor(cg, written, index))[1]:
            traffic[name] = out
    return LayerLevels(tuple(names[g] for g in order), tuple(sizes), levels, kept, scaling, traffic)
