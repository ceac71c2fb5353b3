"""Export a pruning plan: order channels so consumers read contiguous ranges, slice weights, select the rest.

Ordering (why not UPSCALE's max-cost path): each group's live channels are kept as a sequence of
blocks whose inner order is free. Consumers are taken by MACs, largest first; a consumer's channel
set S is made contiguous when the blocks it touches are adjacent, the inner ones lie wholly in S,
and the two end blocks can be split with their S part facing inward. That keeps every earlier
consumer contiguous (their blocks are only split, never moved), so the costliest consumers read one
range. The first two consumers of any group always fit. A consumer whose set cannot fit, or whose
input concatenates several groups (DenseNet), reads its channels with the cheapest selection the
target runs: one Slice for a contiguous range, else Gather, else Slice+Concat of each range.

Every producer computes its group's live channels in the chosen order (its weight rows permuted),
so outputs never need a scatter. Copies per inference are what the selections materialize.

Split and Slice nodes on a channel axis keep their place: the analysis cut their input's layout at
their offsets, so each output is a run of whole spaces, and their split sizes or slice bounds are
rewritten to the pruned widths. Grouped Convs keep their group count (every group keeps the same
local channels); depthwise Conv/ConvTranspose get the new channel count as their group.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.passes.ir_utils import add_initializer, const_array, constant_value, input_of, name_of, static_shape
from edgec.passes.pruning.channel_graph import channel_range, slice_bounds
from edgec.passes.pruning.plan import Plan, positions
from edgec.passes.pruning.records import ChannelGraph, Consumer, Layout, ParamUse


@dataclasses.dataclass(frozen=True)
class Selection:
    """How one consumer reads its input: ``kind`` is none | slice | gather | slices."""

    node: str
    kind: str
    channels: int
    of: int
    bytes: int


def _refine(blocks: list[set[int]], s: set[int]) -> list[set[int]] | None:
    """Split blocks so ``s`` is contiguous, or None if the current block order forbids it."""
    hit = [i for i, b in enumerate(blocks) if b & s]
    if not hit:
        return blocks
    lo, hi = hit[0], hit[-1]
    if hit != list(range(lo, hi + 1)) or any(not blocks[i] <= s for i in range(lo + 1, hi)):
        return None
    if lo == hi:
        mid = [blocks[lo] - s, blocks[lo] & s]
        return [b for b in blocks[:lo] + mid + blocks[lo + 1:] if b]
    first = [blocks[lo] - s, blocks[lo] & s]
    last = [blocks[hi] & s, blocks[hi] - s]
    return [b for b in blocks[:lo] + first + blocks[lo + 1:hi] + last + blocks[hi + 1:] if b]


def choose_orders(cg: ChannelGraph, plan: Plan, reorder: bool) -> dict[int, np.ndarray]:
    """Group -> its live channel indices in export order (ascending when ``reorder`` is off)."""
    orders = {g: live.copy() for g, live in plan.live.items()}
    if not reorder:
        return orders
    wants: dict[int, list[tuple[int, set[int]]]] = {}
    for c in cg.consumers:
        pos = positions(cg, c.layout)
        per_group: dict[int, set[int]] = {}
        for p in plan.reads[c.node]:
            per_group.setdefault(pos[p][0], set()).add(pos[p][1])
        for g, s in per_group.items():
            wants.setdefault(g, []).append((c.macs, s))
    frozen = cg.frozen_groups()
    for g, items in wants.items():
        if g in frozen:
            continue  # a frozen group's channels stay in their order: its consumers select theirs
        blocks = [set(orders[g].tolist())]
        for _, s in sorted(items, key=lambda t: -t[0]):
            blocks = _refine(blocks, s) or blocks
        orders[g] = np.array([i for b in blocks for i in sorted(b)], dtype=np.int64)
    return orders


def value_perm(cg: ChannelGraph, layout: Layout, orders: dict[int, np.ndarray]) -> np.ndarray:
    """Original channel positions of a tensor, in their new order (dropped channels left out)."""
    parts, offset = [], 0
    for space in layout.pieces:
        parts.append(orders[cg.group(space)] + offset)
        offset += cg.space_sizes[space]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _read_positions(cg: ChannelGraph, c: Consumer, plan: Plan, orders: dict[int, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the new input that the consumer reads, the original channels at them)."""
    perm = value_perm(cg, c.layout, orders)
    new_pos = np.flatnonzero(np.isin(perm, plan.reads[c.node]))
    return new_pos, perm


def _kind(new_pos: np.ndarray, width: int, kinds: tuple[str, ...], naive: bool) -> str:
    if len(new_pos) == width:
        return "none"
    contiguous = len(new_pos) > 0 and new_pos[-1] - new_pos[0] + 1 == len(new_pos)
    if naive:
        return "gather"
    if contiguous:
        return "slice"
    return "gather" if "gather" in kinds else "slices"


def selections(model: ir.Model, cg: ChannelGraph, plan: Plan, orders: dict[int, np.ndarray],
               kinds: tuple[str, ...], naive: bool = False) -> list[Selection]:
    """The selection each consumer needs, with the bytes it copies per inference (float32 = 4)."""
    values = {v.name: v for n in model.graph for v in n.inputs if v is not None}
    out = []
    for c in cg.consumers:
        new_pos, perm = _read_positions(cg, c, plan, orders)
        kind = _kind(new_pos, len(perm), kinds, naive)
        value = values[c.value]
        shape = static_shape(value) or [0]
        per_channel = math.prod(shape) // max(cg.width(c.layout), 1)
        itemsize = int(value.dtype.itemsize) if value.dtype is not None else 4
        copied = 0 if kind == "none" else int(per_channel * len(new_pos) * itemsize)
        out.append(Selection(c.node, kind, len(new_pos), cg.width(c.layout), copied))
    return out


class _Writer:
    """Applies a plan to one model: new initializers, selection nodes, fixed shape constants."""

    def __init__(self, model: ir.Model, cg: ChannelGraph, plan: Plan, orders: dict[int, np.ndarray]) -> None:
        self.model, self.graph, self.cg, self.plan, self.orders = model, model.graph, cg, plan, orders
        self.nodes = {n.name: n for n in model.graph}
        self.weights: dict[tuple[str, int], np.ndarray] = {}
        self.counter = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}__pruned{self.counter}"

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self.name(base), array)

    def take(self, node: ir.Node, index: int, axis: int, picks: np.ndarray) -> None:
        """Replace input ``index`` of ``node`` by its constant taken at ``picks`` along ``axis``."""
        key = (name_of(node), index)
        array = self.weights.get(key)
        if array is None:
            array = const_array(node.inputs[index])
        self.weights[key] = np.take(array, picks, axis=axis)

    def flush(self) -> None:
        for (node_name, index), array in self.weights.items():
            node = self.nodes[node_name]
            node.replace_input_with(index, self.const(name_of(input_of(node, index)), np.ascontiguousarray(array)))


def apply_plan(model: ir.Model, cg: ChannelGraph, plan: Plan, orders: dict[int, np.ndarray],
               kinds: tuple[str, ...], naive: bool = False) -> list[Selection]:
    """Rewrite ``model`` in place to the plan; return the selection each consumer got."""
    chosen = selections(model, cg, plan, orders, kinds, naive)
    w = _Writer(model, cg, plan, orders)
    for prod in cg.producers:
        node, order = w.nodes[prod.node], value_perm(cg, Layout(0, prod.spaces), orders)
        w.take(node, 1, prod.w_axis, order)
        if prod.bias is not None:
            w.take(node, 2, -1, order)
    for use in cg.params:
        node = w.nodes[use.node]
        layout = use.layout or cg.layouts[use.value]
        if _is_depthwise_weight(node, use):
            node.attributes["group"] = ir.AttrInt64("group", len(value_perm(cg, layout, orders)))
        w.take(node, use.input_index, use.axis, value_perm(cg, layout, orders))
    for c, sel in zip(cg.consumers, chosen, strict=True):
        new_pos, perm = _read_positions(cg, c, plan, orders)
        inner = c.layout.inner
        features = (perm[new_pos][:, None] * inner + np.arange(inner)).ravel()
        w.take(w.nodes[c.node], 1, c.w_axis, features)
        if sel.kind != "none":
            _insert_selection(w, w.nodes[c.node], c, new_pos, sel.kind)
    w.flush()
    _fix_reshapes(w)
    _fix_sections(w)
    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None  # stale after pruning; ORT and the checker infer them again
    common.RemoveUnusedNodesPass()(model)
    return chosen


def _is_depthwise_weight(node: ir.Node, use: ParamUse) -> bool:
    """A depthwise Conv/ConvTranspose's weight (one input channel per group): its group count follows."""
    weight = input_of(node, use.input_index).const_value
    return (node.op_type in ("Conv", "ConvTranspose") and use.input_index == 1 and use.axis == 0
            and use.layout is None and weight is not None and weight.shape[1] == 1)


def _runs(new_pos: np.ndarray) -> list[tuple[int, int]]:
    breaks = np.flatnonzero(np.diff(new_pos) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(new_pos, breaks)]


def _insert_selection(w: _Writer, node: ir.Node, c: Consumer, new_pos: np.ndarray, kind: str) -> None:
    source, axis, inner = node.inputs[0], c.layout.axis, c.layout.inner
    axes = w.const("axes", np.array([axis], dtype=np.int64))
    new_nodes: list[ir.Node] = []
    if kind == "gather":
        idx = w.const("channels", (new_pos[:, None] * inner + np.arange(inner)).ravel().astype(np.int64))
        new_nodes.append(ir.node("Gather", [source, idx], {"axis": axis}, name=w.name(f"{node.name}_gather")))
    else:
        for start, end in _runs(new_pos):
            starts = w.const("starts", np.array([start * inner], dtype=np.int64))
            ends = w.const("ends", np.array([end * inner], dtype=np.int64))
            new_nodes.append(ir.node("Slice", [source, starts, ends, axes], name=w.name(f"{node.name}_slice")))
        if len(new_nodes) > 1:
            new_nodes.append(ir.node("Concat", [n.outputs[0] for n in new_nodes], {"axis": axis},
                                     name=w.name(f"{node.name}_concat")))
    for n in new_nodes:
        n.outputs[0].name = w.name(f"{n.name}_out")
    w.graph.insert_before(node, new_nodes)
    node.replace_input_with(0, new_nodes[-1].outputs[0])


def _fix_reshapes(w: _Writer) -> None:
    """Reshapes that flatten channels spell the channel count in their shape constant: rewrite it."""
    for name in w.cg.reshapes:
        node = w.nodes[name]
        layout = w.cg.layouts[name_of(node.outputs[0])]
        found = constant_value(node.inputs[1])
        assert found is not None  # the analysis recorded this Reshape for its constant shape
        shape = found.copy()
        if shape[layout.axis] in (-1, 0):
            continue
        shape[layout.axis] = len(value_perm(w.cg, layout, w.orders)) * layout.inner
        node.replace_input_with(1, w.const(input_of(node, 1).name or "shape", shape))


def _new_width(w: _Writer, layout: Layout) -> int:
    return len(value_perm(w.cg, layout, w.orders))


def _fix_sections(w: _Writer) -> None:
    """Split sizes and Slice bounds on a channel axis count the pruned channels now: rewrite them."""
    for name in w.cg.sections:
        node = w.nodes[name]
        if node.op_type == "Split":
            _fix_split(w, node, [_new_width(w, w.cg.layouts[name_of(out)]) for out in node.outputs])
        else:
            _fix_slice(w, node)


def _fix_split(w: _Writer, node: ir.Node, sizes: list[int]) -> None:
    split = np.array(sizes, dtype=np.int64)
    if "split" in node.attributes or w.model.opset_imports.get("", 18) < 13:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)
        return
    node.attributes.pop("num_outputs", None)  # opset 18 equal parts: the parts may differ now
    if len(node.inputs) < 2:
        node.resize_inputs(2)
    node.replace_input_with(1, w.const(name_of(node.inputs[1]) if node.inputs[1] is not None else "split", split))


def _fix_slice(w: _Writer, node: ir.Node) -> None:
    source = w.cg.layouts[name_of(input_of(node, 0))]
    shape = static_shape(node.inputs[0])  # still the original shape: shapes are cleared after the rewrite
    bounds = slice_bounds(node)
    assert bounds is not None and shape is not None  # the analysis recorded it for both (_Analyzer._slice)
    start, _, _ = channel_range(bounds, source.axis, shape)
    new_start = _new_width(w, Layout(source.axis, source.pieces[: w.cg.offsets(source).index(start)]))
    new_end = new_start + _new_width(w, w.cg.layouts[name_of(node.outputs[0])])
    index = [a % len(shape) for a in bounds[2]].index(source.axis)
    old_starts = constant_value(node.inputs[1])  # an initializer or a Constant node
    assert old_starts is not None  # slice_bounds found it constant
    dtype = old_starts.dtype
    starts, ends = np.array(bounds[0], dtype=dtype), np.array(bounds[1], dtype=dtype)
    starts[index], ends[index] = new_start, new_end
    node.replace_input_with(1, w.const(input_of(node, 1).name or "starts", starts))
    node.replace_input_with(2, w.const(input_of(node, 2).name or "ends", ends))
