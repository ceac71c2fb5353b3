"""Attention-head pruning: find multi-head attention blocks, score their heads, cut the weakest heads out.

Matching. A block is anchored on a Softmax. Its score-side sources (Q and K) are the linear layers (a MatMul
by a constant 2-D weight, optionally plus a constant 1-D bias) found walking back from the Softmax input;
its value source (V) is the linear layer behind the other operand of the first MatMul after the Softmax.
From those three outputs a *factor layout* is pushed forward through every consumer: each axis is a
row-major product of named factors, ``C`` (a projection's full width, not split yet), ``H`` (heads), ``d``
(within a head) and ``x`` (anything else). A Reshape regroups the factors in row-major order, and the first
split of ``C`` defines ``H`` (outer) and ``d`` (inner); a Transpose permutes axes; a MatMul of two block
tensors must carry ``H`` identically on the batch axes of both operands and never contract over it;
elementwise ops and Softmax pass the layout through when their other operands are constant along ``H``
(the mask and the scale are). The walk ends at the output projection: a MatMul by a constant weight whose
input's last axis is exactly ``(H, d)``. Anything else (another op, a graph output, a dynamic shape, a
shape constant that spells ``H`` in a way that cannot be rewritten, a split of ``H`` or ``d``) rejects the
block with a reason instead of guessing. The check is on the whole dataflow, so it accepts both the eager
and the SDPA exports of transformers (the latter reshapes K to ``[B*H, S, d]`` and back).

Pruning. Keeping heads ``kept`` (of ``H``) keeps the columns ``h*d .. h*d+d-1`` of the Q/K/V weights and
biases and the same rows of the output projection, and scales by ``H'/H`` every Reshape shape entry whose
axis holds ``H`` (``-1`` entries are left to ONNX). The Softmax scale is untouched: ``d`` does not change.
A dropped head contributes nothing afterwards, so pruning heads whose V columns and output rows were zeroed
is exact. Blocks refer to one model's nodes and values: find them again after pruning or cloning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgec.passes.ir_utils import add_initializer, constant_value, input_of, name_of, static_shape
from edgec.passes.pruning.activations import capture_values

Factor = tuple[str, int]  # (kind, size); kind in C, H, d, x; size-1 factors are never stored
Axis = tuple[Factor, ...]
Layout = tuple[Axis, ...]

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Pow", "Max", "Min", "Equal", "Less", "Greater",
                         "And", "Or"})
UNARY = frozenset({"Identity", "Cast", "IsNaN", "IsInf", "Not", "Neg", "Abs", "Exp", "Sqrt", "Erf", "Tanh",
                   "Sigmoid", "Relu"})
SOFTMAX = frozenset({"Softmax", "LogSoftmax"})
WALK_LIMIT = 256  # values visited walking back from a Softmax to its projections


class _Reject(Exception):  # noqa: N818 - internal control flow: "this block does not match", with the reason
    """Raised while matching a block; the message is the reason reported for it."""


@dataclasses.dataclass(frozen=True)
class Projection:
    """One of Q, K, V: ``MatMul(x, weight)`` with an optional ``Add`` of a 1-D bias; ``head_dim`` is its d."""

    matmul: ir.Node
    bias_add: ir.Node | None
    bias_index: int
    head_dim: int


@dataclasses.dataclass(frozen=True)
class ShapeFix:
    """A Reshape whose shape constant spells the head count at ``axes`` (entries scaled by H'/H)."""

    node: ir.Node
    axes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AttentionBlock:
    """One matched multi-head attention; ``name`` (the key of ``keep``) is its Softmax's node or output name."""

    name: str
    num_heads: int
    head_dim: int  # d of V and of the output projection's rows
    queries_keys: tuple[Projection, Projection]
    values: Projection
    out_proj: ir.Node
    shape_fixes: tuple[ShapeFix, ...]
    layouts: tuple[tuple[ir.Value, Layout], ...]  # every tensor between the projections and out_proj

    @property
    def projections(self) -> tuple[Projection, ...]:
        """Q, K and V, in that order."""
        return (*self.queries_keys, self.values)

    @property
    def context(self) -> ir.Value:
        """The merged per-head outputs ``[..., H*d]`` the output projection reads."""
        return input_of(self.out_proj, 0)


# ----------------------------------------------------------------------------------------------- matching
def _static_dims(value: ir.Value) -> list[int]:
    dims = static_shape(value)
    if dims is None:
        raise _Reject(f"{value.name}: shape {value.shape} is not static (run shape inference on fixed input shapes)")
    return dims


def _projection_at(value: ir.Value) -> tuple[ir.Node, ir.Node | None, int] | None:
    """``(matmul, bias_add, bias_index)`` when ``value`` is a linear layer's output, else None."""
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul":
        weight = constant_value(node.inputs[1])
        return (node, None, -1) if weight is not None and weight.ndim == 2 else None
    if node.op_type != "Add":
        return None
    for index in (0, 1):
        bias, other = constant_value(node.inputs[index]), node.inputs[1 - index]
        inner = _projection_at(other) if other is not None else None
        if (bias is not None and bias.ndim == 1 and inner is not None and inner[1] is None and other is not None
                and len(other.uses()) == 1):
            return inner[0], node, index
    return None


def _sources_behind(value: ir.Value | None) -> list[ir.Value]:
    """Outputs of the linear layers that ``value`` is computed from, walking back through anything else."""
    stack: list[ir.Value | None] = [value]
    seen: set[ir.Value] = set()
    found: list[ir.Value] = []
    while stack:
        current = stack.pop()
        if current is None or current in seen:
            continue
        seen.add(current)
        if len(seen) > WALK_LIMIT:
            raise _Reject(f"more than {WALK_LIMIT} values between the Softmax and its projections")
        producer = current.producer()
        if _projection_at(current) is not None:
            found.append(current)
        elif producer is not None:
            stack.extend(producer.inputs)
    return found


def _value_operand(softmax: ir.Node) -> ir.Value:
    """The other operand of the first MatMul that reads the Softmax's output (through elementwise ops)."""
    frontier, seen = [softmax.outputs[0]], set()
    while frontier:
        value = frontier.pop(0)
        for use in value.uses():
            node = use.node
            if node.op_type == "MatMul" and use.idx == 0 and node.inputs[1] is not None:
                return node.inputs[1]
            if node not in seen and (node.op_type in ELEMENTWISE | UNARY):
                seen.add(node)
                frontier.extend(node.outputs)
    raise _Reject("no MatMul reads the attention probabilities")


def _resolve_reshape(shape: np.ndarray, in_dims: list[int], allowzero: bool) -> list[int]:
    dims = [in_dims[i] if s == 0 and not allowzero else int(s) for i, s in enumerate(shape)]
    known = math.prod(d for d in dims if d != -1)
    total = math.prod(in_dims)
    if dims.count(-1) > 1 or known == 0 or total % known:
        raise _Reject(f"reshape to {shape.tolist()} from {in_dims}")
    return [total // known if d == -1 else d for d in dims]


class _Walk:
    """Pushes factor layouts from the three projections to the output projection (one block)."""

    def __init__(self, sources: list[ir.Value]) -> None:
        self.layouts: dict[ir.Value, Layout] = {}
        self.head_dims: dict[ir.Value, int] = {}  # per source, set when its C is split
        # tensor -> the source it derives from (single-source paths; None past a tensor of several sources)
        self.origin: dict[ir.Value, ir.Value | None] = {}
        self.num_heads: int | None = None
        self.fixes: list[ShapeFix] = []
        self.out_proj: ir.Node | None = None
        for src in sources:
            dims = _static_dims(src)
            self.layouts[src] = (*(_x(d) for d in dims[:-1]), (("C", dims[-1]),))
            self.origin[src] = src

    def run(self, graph: ir.Graph) -> None:
        visited: set[ir.Node] = set()
        for node in graph:
            if any(v in self.layouts for v in node.inputs):
                self._step(node)
                visited.add(node)
        for value in self.layouts:
            if value.is_graph_output():
                raise _Reject(f"{value.name}: a per-head tensor is a graph output")
            for use in value.uses():
                if use.node not in visited:
                    raise _Reject(f"{_label(use.node)}: reads {value.name} outside the main graph's order")
        if self.out_proj is None:
            raise _Reject("no output projection reached")

    def _step(self, node: ir.Node) -> None:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        layout: Layout | None
        if op == "Reshape" and node.inputs[0] in self.layouts and node.inputs[1] not in self.layouts:
            layout = self._reshape(node)
        elif op == "Transpose":
            layout = self._transpose(node)
        elif op == "MatMul":
            layout = self._matmul(node)
        elif op in ELEMENTWISE:
            layout = self._broadcast(node)
        elif op in UNARY or op in SOFTMAX:
            layout = self.layouts[input_of(node, 0)]
            axis = node.attributes.get_int("axis", -1) if op in SOFTMAX else None
            if axis is not None and (not -len(layout) <= axis < len(layout) or _has_heads(layout[axis])):
                raise _Reject(f"{_label(node)}: {op} over axis {axis}, not within each head")
        else:
            raise _Reject(f"{_label(node)}: {op} on a per-head tensor is not handled")
        if layout is not None:
            source = {self.origin.get(v) for v in node.inputs if v in self.layouts}
            for out in node.outputs:
                self.layouts[out] = layout
                if len(source) == 1:
                    self.origin[out] = next(iter(source))

    def _reshape(self, node: ir.Node) -> Layout:
        shape = constant_value(node.inputs[1])
        if shape is None:
            raise _Reject(f"{_label(node)}: Reshape to a computed shape")
        layout = self.layouts[input_of(node, 0)]
        in_dims = [_size(axis) for axis in layout]
        allowzero = bool(node.attributes.get_int("allowzero", 0))
        out_layout = self._regroup(node, layout, _resolve_reshape(shape, in_dims, allowzero))
        axes = []
        for i, axis in enumerate(out_layout):
            if not _has_heads(axis) or shape[i] == -1:
                continue
            if shape[i] == 0 and not allowzero:  # copies the input dim: fine only if that dim is the same axis
                if i >= len(layout) or layout[i] != axis:
                    raise _Reject(f"{_label(node)}: shape entry {i} copies a different input axis")
                continue
            axes.append(i)
        if axes:
            self.fixes.append(ShapeFix(node, tuple(axes)))
        return out_layout

    def _regroup(self, node: ir.Node, layout: Layout, out_dims: list[int]) -> Layout:
        """Split the row-major factor sequence of ``layout`` into axes of ``out_dims``."""
        queue = [f for axis in layout for f in axis]
        out: list[Axis] = []
        for size in out_dims:
            taken: list[Factor] = []
            acc = 1
            while acc < size:
                if not queue:
                    raise _Reject(f"{_label(node)}: reshape to {out_dims} changes the element count")
                kind, f = queue.pop(0)
                if size % (acc * f) == 0:
                    taken.append((kind, f))
                    acc *= f
                    continue
                need = size // acc
                if size % acc or f % need or kind in ("H", "d"):
                    raise _Reject(f"{_label(node)}: reshape to {out_dims} splits a {kind} factor of {f}")
                if kind == "C":  # the head split: outer factor is the head count
                    self._set_heads(node, need, f // need)
                kinds = ("H", "d") if kind == "C" else ("x", "x")
                taken.append((kinds[0], need))
                queue.insert(0, (kinds[1], f // need))
                acc = size
            out.append(tuple(taken))
        if queue:
            raise _Reject(f"{_label(node)}: reshape to {out_dims} changes the element count")
        return tuple(out)

    def _set_heads(self, node: ir.Node, heads: int, head_dim: int) -> None:
        if self.num_heads not in (None, heads):
            raise _Reject(f"{_label(node)}: splits {heads} heads where another projection has {self.num_heads}")
        self.num_heads = heads
        source = self.origin.get(input_of(node, 0))
        if source is None or source in self.head_dims:
            raise _Reject(f"{_label(node)}: cannot tell which projection it splits into heads")
        self.head_dims[source] = head_dim

    def _transpose(self, node: ir.Node) -> Layout:
        layout = self.layouts[input_of(node, 0)]
        perm = node.attributes.get_ints("perm", list(reversed(range(len(layout)))))
        if sorted(perm) != list(range(len(layout))):
            raise _Reject(f"{_label(node)}: perm {list(perm)} for rank {len(layout)}")
        return tuple(layout[p] for p in perm)

    def _matmul(self, node: ir.Node) -> Layout | None:
        a, b = node.inputs
        if a in self.layouts and b not in self.layouts:
            self._end_at(node)
            return None
        if a not in self.layouts or b not in self.layouts:
            other = a if b in self.layouts else b
            raise _Reject(f"{_label(node)}: MatMul of a per-head tensor with {other.name if other else None}")
        la, lb = self.layouts[a], self.layouts[b]
        if len(la) < 3 or len(lb) < 3:
            raise _Reject(f"{_label(node)}: per-head MatMul of rank < 3")
        if _has_heads(la[-1]) or _has_heads(lb[-2]) or _has_heads(la[-2]) or _has_heads(lb[-1]):
            raise _Reject(f"{_label(node)}: MatMul over the head axis")
        batch_a, batch_b = la[:-2], lb[:-2]
        rank = max(len(batch_a), len(batch_b))
        batch_a = ((),) * (rank - len(batch_a)) + batch_a
        batch_b = ((),) * (rank - len(batch_b)) + batch_b
        batch = []
        for fa, fb in zip(batch_a, batch_b, strict=True):
            if (_has_heads(fa) or _has_heads(fb)) and fa != fb:
                raise _Reject(f"{_label(node)}: heads of its two operands do not line up")
            batch.append(fa or fb)
        return (*batch, la[-2], lb[-1])

    def _end_at(self, node: ir.Node) -> None:
        """``node`` must be the output projection: a constant 2-D weight reading (H, d) on the last axis."""
        layout, weight = self.layouts[input_of(node, 0)], constant_value(node.inputs[1])
        if weight is None or weight.ndim != 2:
            raise _Reject(f"{_label(node)}: MatMul of a per-head tensor with a non-constant or non-2-D weight")
        if self.out_proj is not None:
            raise _Reject(f"{_label(node)}: a second output projection (first {_label(self.out_proj)})")
        if any(_has_heads(axis) for axis in layout[:-1]) or [k for k, _ in layout[-1]] != ["H", "d"]:
            raise _Reject(f"{_label(node)}: its input's last axis is not (heads, head dim) in that order")
        self.out_proj = node

    def _broadcast(self, node: ir.Node) -> Layout:
        ours = [v for v in node.inputs if v in self.layouts]
        base = self.layouts[ours[0]]
        if any(self.layouts[v] != base for v in ours):
            raise _Reject(f"{_label(node)}: operands with different head layouts")
        for side in node.inputs:
            if side is None or side in self.layouts:
                continue
            dims = _static_dims(side)
            if len(dims) > len(base):
                raise _Reject(f"{_label(node)}: {side.name} broadcasts the per-head tensor to a higher rank")
            for offset, dim in enumerate(reversed(dims)):
                if dim != 1 and _has_heads(base[len(base) - 1 - offset]):
                    raise _Reject(f"{_label(node)}: {side.name} varies along the head axis")
        return base


def _label(node: ir.Node) -> str:
    """The node's name, or its first output's name for unnamed nodes."""
    return node.name or node.outputs[0].name or node.op_type


def _x(dim: int) -> Axis:
    return (("x", dim),) if dim != 1 else ()


def _size(axis: Axis) -> int:
    return math.prod(f for _, f in axis)


def _has_heads(axis: Axis) -> bool:
    return any(kind in ("H", "C") for kind, _ in axis)


def _match(graph: ir.Graph, softmax: ir.Node) -> AttentionBlock:
    scores = _sources_behind(softmax.inputs[0])
    values = _sources_behind(_value_operand(softmax))
    if len(scores) != 2 or len(values) != 1:
        raise _Reject(f"expected Q, K behind the scores and V behind the context; found {len(scores)} and "
                      f"{len(values)} linear layers")
    walk = _Walk([*scores, *values])
    walk.run(graph)
    if softmax.outputs[0] not in walk.layouts:
        raise _Reject("the Softmax is not on the path from these projections to an output projection")
    projections = []
    for src in (*scores, *values):
        if src not in walk.head_dims:
            raise _Reject(f"{src.name}: this projection is never split into heads")
        found = _projection_at(src)
        assert found is not None  # _sources_behind keeps projection outputs only
        matmul, bias_add, bias_index = found
        projections.append(Projection(matmul, bias_add, bias_index, walk.head_dims[src]))
    out_proj, v = walk.out_proj, projections[2]
    # run() rejects a walk that reaches no output projection; every source was split, so heads are known
    assert out_proj is not None and walk.num_heads is not None
    head_dim = dict(walk.layouts[input_of(out_proj, 0)][-1])["d"]
    if head_dim != v.head_dim or projections[0].head_dim != projections[1].head_dim:
        raise _Reject(f"head dims differ: Q/K {projections[0].head_dim}/{projections[1].head_dim}, "
                      f"V {v.head_dim}, output projection {head_dim}")
    return AttentionBlock(_label(softmax), walk.num_heads, head_dim,
                          (projections[0], projections[1]), v, out_proj,
                          tuple(walk.fixes), tuple(walk.layouts.items()))


def find_attention_blocks(model: ir.Model) -> tuple[list[AttentionBlock], list[tuple[str, str]]]:
    """Matched blocks, and ``(node, reason)`` for each Softmax that is not a prunable attention block.

    Needs static shapes on the model's values (run shape inference first). Does not change the model.
    """
    blocks: list[AttentionBlock] = []
    skipped: list[tuple[str, str]] = []
    claimed: set[ir.Node] = set()
    for node in model.graph:
        if node.op_type not in SOFTMAX or node.domain not in ("", "ai.onnx"):
            continue
        try:
            block = _match(model.graph, node)
            mine = {p.matmul for p in block.projections} | {block.out_proj}
            if mine & claimed:
                raise _Reject("shares projections with another attention block")
        except _Reject as reason:
            skipped.append((_label(node), f"attention heads not prunable: {reason}"))
            continue
        claimed |= mine
        blocks.append(block)
    return blocks, skipped


# ---------------------------------------------------------------------------------------------- importance
def _matched(value: ir.Value | None) -> np.ndarray:
    """A constant the matching found (weight, bias or Reshape shape: initializer or Constant node)."""
    array = constant_value(value)
    assert array is not None, f"{value!r} was matched as a constant"
    return array


def _head_slices(block: AttentionBlock, head_dim: int) -> list[np.ndarray]:
    return [np.arange(h * head_dim, (h + 1) * head_dim) for h in range(block.num_heads)]


def weight_importance(block: AttentionBlock) -> np.ndarray:
    """Per head: Frobenius norm of its V columns times that of its output-projection rows."""
    w_v, w_o = _matched(block.values.matmul.inputs[1]), _matched(block.out_proj.inputs[1])
    heads = _head_slices(block, block.head_dim)
    return np.array([np.linalg.norm(w_v[:, cols]) * np.linalg.norm(w_o[cols]) for cols in heads])


def activation_importance(block: AttentionBlock, contexts: Sequence[np.ndarray]) -> np.ndarray:
    """Per head: RMS norm of what it adds to the output projection's result, over calibration tokens.

    ``contexts`` are the block's ``context`` tensors ``[..., H*d]``, one per calibration feed.
    """
    w_o = _matched(block.out_proj.inputs[1])
    heads = _head_slices(block, block.head_dim)
    totals = np.zeros(block.num_heads)
    for ctx in contexts:
        flat = ctx.reshape(-1, ctx.shape[-1]).astype(np.float64)
        for h, cols in enumerate(heads):
            contribution = flat[:, cols] @ w_o[cols]
            totals[h] += float(np.mean(np.sum(contribution**2, axis=1)))
    return np.sqrt(totals / max(len(contexts), 1))


def head_importance(model: ir.Model, blocks: Sequence[AttentionBlock],
                    feeds: Sequence[Mapping[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Scores per block name, one per head (higher = more important): activation-based with feeds, else weights."""
    if not feeds or not blocks:
        return {b.name: weight_importance(b) for b in blocks}
    names = [name_of(b.context) for b in blocks]
    contexts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for values in capture_values(model, names, feeds):
        for name in names:
            contexts[name].append(values[name])
    return {b.name: activation_importance(b, contexts[name_of(b.context)]) for b in blocks}


def heads_to_keep(scores: Mapping[str, np.ndarray], ratio: float) -> dict[str, list[int]]:
    """Per block, the sorted indices of the heads to keep: drop ``floor(ratio * H)`` lowest, keep at least one."""
    keep = {}
    for name, s in scores.items():
        drop = min(len(s) - 1, int(math.floor(ratio * len(s) + 1e-9)))
        keep[name] = sorted(int(h) for h in np.argsort(-s, kind="stable")[: len(s) - drop])
    return keep


# ----------------------------------------------------------------------------------------------- rewriting
def prune_heads(model: ir.Model, blocks: Sequence[AttentionBlock], keep: Mapping[str, Sequence[int]]) -> int:
    """Keep only ``keep[block.name]`` heads of each block (blocks not in ``keep`` stay whole); heads removed.

    Rewrites the Q/K/V weights and biases, the output projection's rows, the head count in Reshape shape
    constants and the static shapes of the tensors in between, in place. The blocks are stale afterwards.
    """
    removed = 0
    for block in blocks:
        if block.name not in keep:
            continue
        kept = np.asarray(keep[block.name], dtype=np.int64)
        if kept.size == 0 or np.any(np.diff(kept) <= 0) or kept[0] < 0 or kept[-1] >= block.num_heads:
            raise ValueError(f"{block.name}: heads to keep must be sorted, distinct, in [0, "
                             f"{block.num_heads}) and not empty; got {kept.tolist()}")
        if kept.size == block.num_heads:
            continue
        _prune_block(model.graph, block, kept)
        removed += block.num_heads - kept.size
    return removed


def _columns(kept: np.ndarray, head_dim: int) -> np.ndarray:
    return (kept[:, None] * head_dim + np.arange(head_dim)).ravel()


def _prune_block(graph: ir.Graph, block: AttentionBlock, kept: np.ndarray) -> None:
    ratio = (kept.size, block.num_heads)
    for proj in block.projections:
        cols = _columns(kept, proj.head_dim)
        _replace_const(graph, proj.matmul, 1, _matched(proj.matmul.inputs[1])[:, cols])
        if proj.bias_add is not None:
            bias = _matched(proj.bias_add.inputs[proj.bias_index])
            _replace_const(graph, proj.bias_add, proj.bias_index, bias[cols])
        _scale_last_dim(proj.matmul.outputs[0], ratio)
    rows = _columns(kept, block.head_dim)
    _replace_const(graph, block.out_proj, 1, _matched(block.out_proj.inputs[1])[rows])
    for fix in block.shape_fixes:
        shape = _matched(fix.node.inputs[1]).copy()
        for axis in fix.axes:
            shape[axis] = shape[axis] // ratio[1] * ratio[0]
        _replace_const(graph, fix.node, 1, shape)
    for value, layout in block.layouts:
        value.shape = ir.Shape([_size(axis) * ratio[0] // ratio[1] if _has_heads(axis) else _size(axis)
                                for axis in layout])


def _scale_last_dim(value: ir.Value, ratio: tuple[int, int]) -> None:
    if value.shape is not None and isinstance(value.shape[-1], int):
        value.shape = ir.Shape([*value.shape[:-1], value.shape[-1] * ratio[0] // ratio[1]])


def _fresh_name(graph: ir.Graph, base: str) -> str:
    taken = {v.name for v in graph.inputs} | set(graph.initializers) | {o.name for n in graph for o in n.outputs}
    index, name = 1, f"{base}__heads"
    while name in taken:
        index += 1
        name = f"{base}__heads{index}"
    return name


def _replace_const(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Give input ``index`` of ``node`` a new initializer holding ``array``; drop the old one if now unused."""
    old = node.inputs[index]
    name = _fresh_name(graph, old.name if old is not None and old.name else f"{_label(node)}_{index}")
    node.replace_input_with(index, add_initializer(graph, name, np.ascontiguousarray(array)))
    if old is None or old.uses() or old.is_graph_input():
        return
    producer = old.producer()
    if old.is_initializer() and old.name:
        graph.initializers.pop(old.name)
    elif producer is not None and producer.op_type == "Constant":
        graph.remove(producer, safe=True)


# ------------------------------------------------------------------------------------------------ one call
@dataclasses.dataclass(frozen=True)
class HeadPruning:
    """What ``prune_attention_heads`` did: blocks matched, heads before and after, and blocks skipped."""

    blocks: int
    heads_before: int
    heads_after: int
    importance: str
    skipped: tuple[tuple[str, str], ...]


def prune_attention_heads(model: ir.Model, ratio: float,
                          feeds: Sequence[Mapping[str, np.ndarray]] | None = None) -> HeadPruning:
    """Drop ``floor(ratio * H)`` heads (at least one kept) of every matched block, ranked on ``feeds`` if given.

    Needs static shapes (run shape inference first). With no feeds the ranking is weight-based.
    """
    blocks, skipped = find_attention_blocks(model)
    before = sum(b.num_heads for b in blocks)
    keep = heads_to_keep(head_importance(model, blocks, feeds), ratio) if ratio > 0 else {}
    removed = prune_heads(model, blocks, keep)
    return HeadPruning(len(blocks), before, before - removed, "activation" if feeds else "weight", tuple(skipped))
