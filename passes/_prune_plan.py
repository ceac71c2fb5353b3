"""Which channels survive: importance per channel, ratios per layer, constrained or unconstrained masks.

A plan says, for every channel group, which of its channels stay *live* (are still computed), and
for every consumer (a Conv/Gemm/MatMul summing over channels) which input channels it still *reads*.
Constrained mode gives one mask per group: every consumer reads the live channels. Unconstrained
mode (UPSCALE) lets each consumer keep its own best channels; a group then stays live wherever some
consumer reads it, padded up to the target's channel multiple.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgec.passes._prune_types import ChannelGraph, Consumer, Layout


@dataclasses.dataclass
class Plan:
    """Live channel indices per group (sorted) and, per consumer node, the input positions it reads."""

    live: dict[int, np.ndarray]
    reads: dict[str, np.ndarray]

    def prunes_anything(self, cg: ChannelGraph) -> bool:
        """Whether some channel is dropped or some consumer reads less than all of its input."""
        groups = cg.groups()
        if any(len(idx) < cg.space_sizes[g] for g, idx in self.live.items() if g in groups):
            return True
        return any(len(self.reads[c.node]) < cg.width(c.layout) for c in cg.consumers)


def round_keep(n: int, ratio: float, multiple: int) -> int:
    """Channels to keep of ``n`` at ``ratio`` pruned, rounded up to ``multiple`` (never above n)."""
    if ratio <= 0:
        return n
    keep = math.ceil(n * (1.0 - ratio) - 1e-9)
    keep = math.ceil(keep / multiple) * multiple
    return min(n, max(keep, min(multiple, n)))


def positions(cg: ChannelGraph, layout: Layout) -> list[tuple[int, int]]:
    """(group, index in group) of every channel of a layout, in order."""
    out = []
    for space in layout.pieces:
        group = cg.group(space)
        out.extend((group, i) for i in range(cg.space_sizes[space]))
    return out


def _weight(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def _norms(w: np.ndarray, axis: int, inner: int, p: int) -> np.ndarray:
    """Per-channel norm of a weight along ``axis`` (``inner`` consecutive slices per channel)."""
    w = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0).reshape(w.shape[axis] // inner, -1)
    return w.sum(1) if p == 1 else np.sqrt((w**2).sum(1))


def _unit(x: np.ndarray) -> np.ndarray:
    mean = float(x.mean()) if x.size else 0.0
    return x / mean if mean > 0 else np.ones_like(x)


def channel_scales(model: ir.Model, cg: ChannelGraph, importance: str) -> dict[int, np.ndarray]:
    """How large each group channel is: BN |scale| (``bn``) or its producers' weight-row norms."""
    groups = cg.groups()
    scales = {g: np.zeros(cg.space_sizes[g]) for g in groups}
    p = 1 if importance == "l1" else 2
    for prod in cg.producers:
        g = cg.group(prod.space)
        scales[g] += _unit(_norms(_weight(model, prod.weight), prod.w_axis, 1, p))
    if importance == "bn":
        bn_scales = _bn_scales(model, cg)
        for g, s in bn_scales.items():
            scales[g] = _unit(s)
    return {g: s if s.any() else np.ones_like(s) for g, s in scales.items()}


def _bn_scales(model: ir.Model, cg: ChannelGraph) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    nodes = {n.name: n for n in model.graph}
    for use in cg.params:
        node = nodes[use.node]
        if node.op_type != "BatchNormalization" or use.input_index != 1:
            continue
        gamma = np.abs(node.inputs[1].const_value.numpy().astype(np.float64))
        var = node.inputs[4].const_value.numpy().astype(np.float64)
        eps = node.attributes["epsilon"].value if "epsilon" in node.attributes else 1e-5
        gamma = gamma / np.sqrt(var + eps)
        for (g, i), value in zip(positions(cg, cg.layouts[use.value]), gamma, strict=True):
            out.setdefault(g, np.zeros(cg.space_sizes[g]))[i] += value
    return out


def consumer_scores(model: ir.Model, cg: ChannelGraph, consumer: Consumer, scales: dict[int, np.ndarray],
                    importance: str) -> np.ndarray:
    """Importance of each input channel of a consumer: its weight-column norm times the channel's size."""
    cols = _norms(_weight(model, consumer.weight), consumer.w_axis, consumer.layout.inner,
                  1 if importance == "l1" else 2)
    size = np.array([scales[g][i] for g, i in positions(cg, consumer.layout)])
    return cols * size


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    # Stable: ties keep the lower index, so equal scores give a deterministic plan.
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def make_plan(model: ir.Model, cg: ChannelGraph, ratio_of: Callable[[str], float], mode: str,
              importance: str, multiple: int) -> Plan:
    """Choose live channels and consumer reads; frozen groups keep everything."""
    scales = channel_scales(model, cg, importance)
    frozen = cg.frozen_groups()
    scores = {c.node: consumer_scores(model, cg, c, scales, importance) for c in cg.consumers}
    group_score = {g: np.zeros(cg.space_sizes[g]) for g in scales}
    group_ratio: dict[int, float] = {}
    for c in cg.consumers:
        for (g, i), s in zip(positions(cg, c.layout), _unit(scores[c.node]), strict=True):
            group_score[g][i] += s
            group_ratio[g] = min(group_ratio.get(g, 1.0), ratio_of(c.node))
    if mode == "constrained":
        live = {g: np.arange(cg.space_sizes[g]) if g in frozen or g not in group_ratio else
                _top(group_score[g], round_keep(cg.space_sizes[g], group_ratio[g], multiple))
                for g in scales}
        reads = {c.node: _reads_of_live(cg, c, live) for c in cg.consumers}
        return Plan(live, reads)
    reads = {c.node: _own_reads(cg, c, scores[c.node], frozen, ratio_of(c.node), multiple) for c in cg.consumers}
    needed: dict[int, set[int]] = {}
    for c in cg.consumers:
        pos = positions(cg, c.layout)
        for p in reads[c.node]:
            needed.setdefault(pos[p][0], set()).add(pos[p][1])
    live = {}
    for g in scales:
        n = cg.space_sizes[g]
        if g in frozen or g not in needed:
            live[g] = np.arange(n)
            continue
        # Pad to the channel multiple with the best unread channels: odd widths cost more than they save.
        want = min(n, math.ceil(len(needed[g]) / multiple) * multiple)
        extra = [i for i in np.argsort(-group_score[g], kind="stable") if i not in needed[g]]
        live[g] = np.array(sorted(needed[g] | set(extra[: want - len(needed[g])])), dtype=np.int64)
    return Plan(live, reads)


def _reads_of_live(cg: ChannelGraph, consumer: Consumer, live: dict[int, np.ndarray]) -> np.ndarray:
    keep = {g: set(idx.tolist()) for g, idx in live.items()}
    return np.array([p for p, (g, i) in enumerate(positions(cg, consumer.layout)) if i in keep[g]],
                    dtype=np.int64)


def _own_reads(cg: ChannelGraph, consumer: Consumer, scores: np.ndarray, frozen: dict[int, str],
               ratio: float, multiple: int) -> np.ndarray:
    pos = positions(cg, consumer.layout)
    fixed = [p for p, (g, _) in enumerate(pos) if g in frozen]
    free = np.array([p for p, (g, _) in enumerate(pos) if g not in frozen], dtype=np.int64)
    chosen = free[_top(scores[free], round_keep(len(free), ratio, multiple))] if len(free) else free
    return np.array(sorted(fixed + chosen.tolist()), dtype=np.int64)


def zero_pruned(model: ir.Model, cg: ChannelGraph, plan: Plan) -> None:
    """Zero, in place, every weight slice the plan removes (dead producer rows, unread consumer columns).

    The result has the original structure; pruning it with the same plan must not change its outputs.
    """
    for prod in cg.producers:
        dead = np.setdiff1d(np.arange(cg.space_sizes[prod.space]), plan.live[cg.group(prod.space)])
        _zero(model, prod.weight, prod.w_axis, dead)
        if prod.bias is not None:
            _zero(model, prod.bias, -1, dead)
    for c in cg.consumers:
        unread = np.setdiff1d(np.arange(cg.width(c.layout)), plan.reads[c.node])
        features = (unread[:, None] * c.layout.inner + np.arange(c.layout.inner)).ravel()
        _zero(model, c.weight, c.w_axis, features)


def _zero(model: ir.Model, name: str, axis: int, index: np.ndarray) -> None:
    value = model.graph.initializers[name]
    array = value.const_value.numpy().copy()
    slicer = [slice(None)] * array.ndim
    slicer[axis] = index
    array[tuple(slicer)] = 0
    value.const_value = ir.Tensor(array, name=name)
