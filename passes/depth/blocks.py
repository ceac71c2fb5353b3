"""Block discovery: residual spans y = x + f(x) on an ONNX IR graph, named after the source model's scopes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeGuard

import onnx_ir as ir

# Ops whose constant weight marks a span as a learned block (a Gelu's `x + c*x^3` has none).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_ATTENTION_OPS = frozenset({"Softmax", "Attention", "MultiHeadAttention"})


@dataclasses.dataclass(frozen=True)
class Block:
    """A span of the graph between two values of a residual stream.

    ``entry`` is the stream value x, ``exit`` the residual Add's output x + f(x); removing the block
    feeds x to every consumer of ``exit``. Ops after the Add (ReLU, a post-norm LayerNormalization)
    stay. ``kind`` is residual (CNN), attention, ffn or layer (attention + ffn); blocks that cannot be
    removed (projection shortcut, Concat, shape change) carry the ``reason``.
    """

    name: str
    kind: str
    entry: str
    exit: str
    nodes: tuple[str, ...]
    removable: bool = True
    reason: str = ""
    channel_axis: int = -1
    children: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """Plain dict for reports and `edgec inspect`."""
        return {"name": self.name, "kind": self.kind, "removable": self.removable, "reason": self.reason,
                "entry": self.entry, "exit": self.exit, "nodes": len(self.nodes), "children": list(self.children)}


def node_scope(node: ir.Node) -> str:
    """The torch module path of a node from the exporter's ``namespace`` metadata, or ''."""
    namespace = node.metadata_props.get("namespace", "")
    modules = [part.split(":")[0].strip() for part in namespace.split("/")[:-1]]
    return next((m for m in reversed(modules) if m), "")


def common_scope(nodes: Iterable[ir.Node]) -> str:
    """The longest dotted module path shared by all ``nodes`` that carry a scope."""
    paths = [s.split(".") for s in (node_scope(n) for n in nodes) if s]
    if not paths:
        return ""
    prefix = paths[0]
    for path in paths[1:]:
        keep = 0
        while keep < min(len(prefix), len(path)) and prefix[keep] == path[keep]:
            keep += 1
        prefix = prefix[:keep]
    return ".".join(prefix)


class _GraphIndex:
    """Topological positions, data-dependence and ancestor sets of one graph."""

    def __init__(self, graph: ir.Graph, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.graph = graph
        self.shapes = shapes or {}
        self.nodes = list(graph)
        self.pos = {id(n): i for i, n in enumerate(self.nodes)}
        data = {id(v) for v in graph.inputs if not v.is_initializer()}
        for node in self.nodes:
            if any(v is not None and id(v) in data for v in node.inputs):
                data.update(id(v) for v in node.outputs)
        self.data = data
        self._ancestors: dict[int, frozenset[int]] = {}

    def shape(self, value: ir.Value) -> tuple[int | ir.SymbolicDim, ...] | None:
        """The value's shape at the calibration sample when known, else its declared (maybe symbolic) one."""
        known = self.shapes.get(value.name or "")
        if known is not None:
            return known
        return None if value.shape is None else tuple(value.shape.dims)

    def is_data(self, value: ir.Value | None) -> TypeGuard[ir.Value]:
        return value is not None and id(value) in self.data

    def ancestors(self, value: ir.Value) -> frozenset[int]:
        """Positions of the data nodes ``value`` depends on, its producer included."""
        producer = value.producer()
        if producer is None or id(producer) not in self.pos:
            return frozenset()
        key = self.pos[id(producer)]
        if key not in self._ancestors:
            found = {key}
            for inp in producer.inputs:
                if self.is_data(inp):
                    found |= self.ancestors(inp)
            self._ancestors[key] = frozenset(found)
        return self._ancestors[key]

    def descends_from(self, value: ir.Value, source: ir.Value) -> bool:
        """True when ``value`` depends on ``source``."""
        producer = source.producer()
        if producer is None:  # a graph input: any data node reading it directly
            return any(inp is source for i in self.ancestors(value) for inp in self.nodes[i].inputs)
        return self.pos[id(producer)] in self.ancestors(value)

    def span(self, entry: ir.Value, exit_node: ir.Node, branch: ir.Value) -> list[ir.Node]:
        """Nodes between ``entry`` and ``branch`` (descendants of one, ancestors of the other) + the Add."""
        upstream = self.ancestors(branch)
        inside: set[int] = set()
        frontier = [entry]
        while frontier:
            value = frontier.pop()
            for use in value.uses():
                key = self.pos.get(id(use.node))
                if key in upstream and key not in inside:
                    inside.add(key)
                    frontier.extend(use.node.outputs)
        return [self.nodes[i] for i in sorted(inside)] + [exit_node]

    def weighted(self, positions: Iterable[int]) -> list[ir.Node]:
        """The weighted ops (constant weight input) among ``positions``."""
        out = []
        for i in positions:
            node = self.nodes[i]
            if node.op_type in WEIGHTED_OPS and any(v is not None and not self.is_data(v) for v in node.inputs[1:]):
                out.append(node)
        return out


def _same_shape(index: _GraphIndex, a: ir.Value, b: ir.Value) -> bool:
    shape_a, shape_b = index.shape(a), index.shape(b)
    return shape_a is not None and shape_b is not None and shape_a == shape_b


def _escape(span: Sequence[ir.Node], graph: ir.Graph) -> str:
    """Why the span's inner values cannot disappear, or '' when only the last node's output leaves it."""
    inside = {id(n) for n in span}
    outputs = {id(v) for v in graph.outputs}
    for node in span[:-1]:
        for value in node.outputs:
            if id(value) in outputs:
                return f"inner value {value.name} is a graph output"
            outside = [u.node for u in value.uses() if id(u.node) not in inside]
            if outside:
                return f"inner value {value.name} is also used by {outside[0].name} outside the block"
    if id(span[-1].outputs[0]) in outputs:
        return f"its output {span[-1].outputs[0].name} is a graph output"
    return ""


def _channel_axis(weighted: Sequence[ir.Node]) -> int:
    return 1 if any(n.op_type.startswith("Conv") for n in weighted) else -1


def _residual(index: _GraphIndex, add: ir.Node) -> Block | None:
    """The block ending at ``add`` when one input derives from the other through weighted ops."""
    a, b = add.inputs[0], add.inputs[1]
    if not (index.is_data(a) and index.is_data(b)):
        return None
    if index.shape(a) is not None and index.shape(b) is not None and index.shape(a) != index.shape(b):
        return None  # a broadcast (attention mask, bias) is no residual stream
    for entry, branch in ((a, b), (b, a)):
        if index.descends_from(branch, entry):
            span = index.span(entry, add, branch)
            weighted = index.weighted(index.pos[id(n)] for n in span)
            if not weighted:
                return None
            kind = "attention" if any(n.op_type in _ATTENTION_OPS for n in span) else "residual"
            reason = _escape(span, index.graph)
            if not reason and not _same_shape(index, entry, add.outputs[0]):
                reason = f"shape changes from {entry.shape} to {add.outputs[0].shape}"
            return Block(common_scope(span) or add.name or "", kind, entry.name or "", add.outputs[0].name or "",
                         tuple(n.name or "" for n in span), not reason, reason, _channel_axis(weighted))
    return _projection(index, add, a, b)


def _projection(index: _GraphIndex, add: ir.Node, a: ir.Value, b: ir.Value) -> Block | None:
    """An Add of two computed paths from a shared value, both weighted: a projection shortcut."""
    ours, theirs = index.ancestors(a), index.ancestors(b)
    shared = ours & theirs
    side_a, side_b = index.weighted(ours - shared), index.weighted(theirs - shared)
    if not (shared and side_a and side_b):
        return None
    short = min((side_a, side_b), key=len)
    nodes = [index.nodes[i] for i in sorted((ours | theirs) - shared)] + [add]
    return Block(common_scope(nodes) or add.name or "", "residual", "", add.outputs[0].name or "",
                 tuple(n.name or "" for n in nodes), False,
                 f"shortcut is not an identity (projection/downsampling through {short[0].name})",
                 _channel_axis(short))


def _dense(index: _GraphIndex, concat: ir.Node) -> Block | None:
    """A Concat([x, f(x)]): a dense connection, listed as not removable."""
    data = [v for v in concat.inputs if index.is_data(v)]
    for entry in data:
        for branch in data:
            if branch is not entry and index.descends_from(branch, entry):
                span = index.span(entry, concat, branch)
                if index.weighted(index.pos[id(n)] for n in span):
                    out = concat.outputs[0]
                    return Block(common_scope(span) or concat.name or "", "dense", entry.name or "",
                                 out.name or "", tuple(n.name or "" for n in span), False,
                                 f"Concat grows the stream from {entry.shape} to {out.shape}")
    return None


def find_sub_blocks(graph: ir.Graph, shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[Block]:
    """Every residual Add (removable or not) and dense Concat, in graph order, with unique names.

    ``shapes`` (value name -> static shape at a calibration sample) decide shape comparisons where the
    declared shapes are symbolic.
    """
    index = _GraphIndex(graph, shapes)
    found = []
    for node in index.nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        block = _residual(index, node) if node.op_type == "Add" else (
            _dense(index, node) if node.op_type == "Concat" else None)
        if block is not None:
            found.append(block)
    return _unique_names(found)


def _unique_names(blocks: list[Block]) -> list[Block]:
    seen: dict[str, int] = {}
    out = []
    for block in blocks:
        count = seen.get(block.name, 0)
        seen[block.name] = count + 1
        out.append(block if not count else dataclasses.replace(block, name=f"{block.name}#{count + 1}"))
    return out


def _next_stream_value(graph_nodes: dict[str, ir.Node], block: Block) -> tuple[str, list[str]]:
    """The stream value after ``block``: its exit, or the output of a lone norm/activation on it."""
    add = graph_nodes[block.nodes[-1]]
    uses = list(add.outputs[0].uses())
    if len(uses) == 1 and len(uses[0].node.outputs) == 1:
        follower = uses[0].node
        return follower.outputs[0].name or "", [follower.name or ""]
    return block.exit, []


def _pair_layer(graph: ir.Graph, nodes: dict[str, ir.Node], attn: Block, ffn: Block,
                between: list[str]) -> tuple[Block, Block, Block]:
    """A transformer layer from its attention and FFN sub-blocks, names made distinct."""
    members = [*attn.nodes, *between, *ffn.nodes]
    name = common_scope(nodes[n] for n in members) or f"{attn.name}+{ffn.name}"
    reason = _escape([nodes[n] for n in members], graph)
    attn = dataclasses.replace(attn, name=f"{name}/attention" if attn.name == name else attn.name)
    ffn = dataclasses.replace(ffn, kind="ffn", name=f"{name}/ffn" if ffn.name == name else ffn.name)
    layer = Block(name, "layer", attn.entry, ffn.exit, tuple(members), not reason, reason,
                  attn.channel_axis, (attn.name, ffn.name))
    return layer, attn, ffn


def discover_blocks(graph: ir.Graph, shapes: Mapping[str, tuple[int, ...]] | None = None,
                    ) -> tuple[list[Block], list[Block]]:
    """``(layers, sub_blocks)``: transformer layers and every residual sub-block.

    A layer is attention followed by an FFN sub-block; a CNN's residual blocks are sub-blocks that belong to
    no layer.
    """
    subs = find_sub_blocks(graph, shapes)
    nodes = {n.name or "": n for n in graph}
    by_entry = {b.entry: i for i, b in enumerate(subs) if b.removable}
    layers = []
    for i, attn in enumerate(subs):
        if attn.kind != "attention" or not attn.removable:
            continue
        stream, between = _next_stream_value(nodes, attn)
        j = by_entry.get(stream, by_entry.get(attn.exit))
        if j is None or subs[j].kind != "residual":
            continue
        between = between if stream == subs[j].entry else []
        layer, subs[i], subs[j] = _pair_layer(graph, nodes, attn, subs[j], between)
        layers.append(layer)
    return layers, subs


def candidates(graph: ir.Graph, granularity: str, shapes: Mapping[str, tuple[int, ...]] | None = None,
               ) -> list[Block]:
    """The blocks a removal may pick at ``granularity`` ("layer" or "sub-block"), graph order.

    At layer granularity a transformer layer replaces its two sub-blocks; CNN blocks are both.
    """
    layers, subs = discover_blocks(graph, shapes)
    if granularity == "sub-block":
        return subs
    grouped = {c for layer in layers for c in layer.children}
    pos = {n.name: i for i, n in enumerate(graph)}
    picked = [*layers, *(b for b in subs if b.name not in grouped)]
    return sorted(picked, key=lambda b: pos.get(b.nodes[-1], 0))
