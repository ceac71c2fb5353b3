"""Which channels survive: importance per channel, ratios per layer, constrained or unconstrained masks.

A plan says, for every channel group, which of its channels stay *live* (are still computed), and
for every consumer (a Conv/Gemm/MatMul summing over channels) which input channels it still *reads*.
Constrained mode gives one mask per group: every consumer reads the live channels. Unconstrained
mode (UPSCALE) lets each consumer keep its own best channels; a group then stays live wherever some
consumer reads it, and each group spends the MACs the constrained mask would (``_prune_budget``).
Frozen groups keep every channel live; in unconstrained mode their consumers may still read fewer.
A group repeated within one tensor (the chunks of a grouped Conv, two gated halves of a Split) gets
one shared mask in every mode, and its channel multiple is divided by the repeats.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec.passes.base import KNOB_DECIMALS
from edgec.passes.ir_utils import const_array, input_of, name_of, static_shape
from edgec.passes.pruning.activations import capture_values
from edgec.passes.pruning.budget import GroupProblem, Reader, own_reads, solve_global, solve_group
from edgec.passes.pruning.records import ChannelGraph, Consumer, Layout


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


ROUNDINGS = ("up", "dithered")
GOLDEN = 0.6180339887498949


def width_phase(n: int) -> float:
    """The dithered rounding offset of a width-``n`` group: the fractional part of log2(n) times the golden ratio.

    Widths of one network differ (64, 128, ... 2048), and so do their offsets, spread over [0, 1).
    Not n itself times the ratio: the offset of 2n would be twice that of n, and the two widths
    would step at the same ratios again.
    """
    return (math.log2(max(n, 1)) * GOLDEN) % 1.0


def round_keep(n: int, ratio: float, multiple: int, rounding: str = "up") -> int:
    """Channels to keep of ``n`` at ``ratio`` pruned, rounded to ``multiple`` (never above n, at least one multiple).

    ``up``: at least the ratio's share is kept. ``dithered``: n (1 - ratio) / multiple is rounded
    down after adding the width's phase, unbiased on average. Rounded up, every width that is a
    multiple of 128 loses 16 channels at the same ratios (1 - r = k/8): ResNet-50's latency falls in
    one large step between ratios 0.368 and 0.375 and nothing lands in between (bench/RESULTS.md,
    Hardware-aware search). Dithered, each width steps at
    its own ratios, so latency falls in small steps and a search can land on a target.
    """
    if ratio <= 0:
        return n
    exact = n * (1.0 - ratio)
    if rounding == "dithered":
        keep = multiple * math.floor(exact / multiple + width_phase(n))
    else:
        keep = math.ceil(math.ceil(exact - 1e-9) / multiple) * multiple
    return min(n, max(keep, min(multiple, n)))


def ratio_breakpoints(proto: onnx.ModelProto, multiple: int, low: float, high: float,
                      rounding: str = "up") -> tuple[float, ...]:
    """Uniform ratios in (low, high] at which some Conv/MatMul layer keeps fewer channels in or out.

    Rounded up, a layer of width n keeps ceil(n (1 - r)) channels rounded up to the channel multiple m,
    so it changes only at r = 1 - k m / n; dithered, at r = 1 - (k - phase(n)) m / n (``round_keep``).
    Between two such values every ratio builds the same model. Rounded up to the search's
    ``KNOB_DECIMALS`` so each one is past its step. (Channel groups joined by a Concat or a residual
    can step elsewhere; the search's model-hash check catches the duplicates that follow.)
    """
    weights = {i.name: list(i.dims) for i in proto.graph.initializer}
    widths: set[int] = set()
    for node in proto.graph.node:
        dims = weights.get(node.input[1], []) if node.op_type in ("Conv", "MatMul") and len(node.input) > 1 else []
        if len(dims) >= 2:  # output and input widths: producers and consumers both round their counts
            widths |= {dims[0], dims[1]} if node.op_type == "Conv" else {dims[-1], dims[-2]}
    scale = 10**KNOB_DECIMALS
    phase = {n: width_phase(n) if rounding == "dithered" else 0.0 for n in widths}
    points = {math.ceil((1.0 - (k - phase[n]) * multiple / n) * scale - 1e-6) / scale
              for n in widths for k in range(1, n // multiple + 1)}
    return tuple(sorted(p for p in points if low < p <= high))


def positions(cg: ChannelGraph, layout: Layout) -> list[tuple[int, int]]:
    """(group, index in group) of every channel of a layout, in order."""
    out: list[tuple[int, int]] = []
    for space in layout.pieces:
        group = cg.group(space)
        out.extend((group, i) for i in range(cg.space_sizes[space]))
    return out


def _weight(model: ir.Model, name: str) -> np.ndarray:
    return const_array(model.graph.initializers[name])


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
        norms = _unit(_norms(_weight(model, prod.weight), prod.w_axis, 1, p))
        bounds = cg.offsets(Layout(0, prod.spaces))
        for space, start, end in zip(prod.spaces, bounds, bounds[1:], strict=False):
            scales[cg.group(space)] += norms[start:end]
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
        gamma = np.abs(const_array(node.inputs[1]).astype(np.float64))
        var = const_array(node.inputs[4]).astype(np.float64)
        eps = node.attributes["epsilon"].value if "epsilon" in node.attributes else 1e-5
        gamma = gamma / np.sqrt(var + eps)
        for (g, i), value in zip(positions(cg, cg.layouts[use.value]), gamma, strict=True):
            out.setdefault(g, np.zeros(cg.space_sizes[g]))[i] += value
    return out


def consumer_scores(model: ir.Model, cg: ChannelGraph, consumer: Consumer, scales: dict[int, np.ndarray],
                    importance: str, input_ms: np.ndarray | None = None) -> np.ndarray:
    """Importance of each input channel of a consumer.

    Weight importances: the channel's weight-column norm times the channel's size (``scales``).
    ``activation``: the expected norm of the channel's contribution to the output,
    sqrt(sum_f |W[:, f]|^2 E[x_f^2]) over the channel's features f, from the mean squares
    ``input_ms`` of the consumer's input on calibration data (Wanda's |W| * |x|, per channel).
    """
    weight = _weight(model, consumer.weight)
    if importance == "activation" and input_ms is not None:
        w2 = np.moveaxis(weight.astype(np.float64) ** 2, consumer.w_axis, 0).reshape(weight.shape[consumer.w_axis], -1)
        contribution = w2.sum(1) * input_ms
        return np.sqrt(contribution.reshape(cg.width(consumer.layout), consumer.layout.inner).sum(1))
    cols = _norms(weight, consumer.w_axis, consumer.layout.inner, 1 if importance == "l1" else 2)
    size = np.array([scales[g][i] for g, i in positions(cg, consumer.layout)])
    return cols * size


def input_mean_squares(model: ir.Model, cg: ChannelGraph, feeds: Sequence[dict[str, np.ndarray]],
                       ) -> dict[str, np.ndarray]:
    """Consumer input value -> mean square of each input feature (channel x inner) over the feeds."""
    axes = {c.value: c.layout.axis for c in cg.consumers}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for outs in capture_values(model, list(axes), feeds):
        for name, axis in axes.items():
            x = np.moveaxis(outs[name].astype(np.float64), axis, -1)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + (x**2).sum(0)
            counts[name] = counts.get(name, 0) + len(x)
    return {name: sums[name] / max(counts[name], 1) for name in sums}


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    # Stable: ties keep the lower index, so equal scores give a deterministic plan.
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def make_plan(model: ir.Model, cg: ChannelGraph, ratio_of: Callable[[str], float], mode: str,
              importance: str, multiple: int, input_ms: dict[str, np.ndarray] | None = None,
              allocation: str = "budgeted", rounding: str = "up",
              group_ratios: Mapping[int, float] | None = None) -> Plan:
    """Choose live channels and consumer reads; frozen groups keep every channel live.

    ``input_ms`` (consumer input value -> feature mean squares) is needed by ``activation`` importance.
    ``allocation`` (see ``_prune_budget``): ``budgeted`` gives each group of an unconstrained plan
    the MACs the constrained mask would spend; ``per-consumer`` has each consumer read its own
    ratio's worth of channels, as UPSCALE publishes it; ``global`` prices MACs once for the whole
    model (either mode), the total matching the uniform constrained plan at the ratios.
    ``rounding`` (``round_keep``) applies to constrained per-group plans; the budgets of the other
    allocations round by value to the nearest multiple. ``group_ratios`` (group -> ratio) overrides
    ``ratio_of`` for every reader of those groups: per-layer widths, one level per channel group.
    """
    if importance == "activation" and input_ms is None:
        raise ValueError("activation importance needs the consumers' input mean squares")
    scales = channel_scales(model, cg, importance)
    frozen = cg.frozen_groups()
    scores = {c.node: consumer_scores(model, cg, c, scales, importance, (input_ms or {}).get(c.value))
              for c in cg.consumers}
    group_score = {g: np.zeros(cg.space_sizes[g]) for g in scales}
    group_ratio: dict[int, float] = {}
    overrides = dict(group_ratios or {})

    def ratio_in(node: str, g: int) -> float:
        return overrides.get(g, ratio_of(node))

    for c in cg.consumers:
        for (g, i), s in zip(positions(cg, c.layout), _unit(scores[c.node]), strict=True):
            group_score[g][i] += s
            group_ratio[g] = min(group_ratio.get(g, 1.0), ratio_in(c.node, g))
    if allocation == "global":
        return _global_plan(model, cg, ratio_in, scores, multiple, shared=mode == "constrained")
    multiples = group_multiples(cg, multiple)
    if mode == "constrained":
        live = {g: np.arange(cg.space_sizes[g]) if g in frozen or g not in group_ratio else
                _top(group_score[g], round_keep(cg.space_sizes[g], group_ratio[g], multiples[g], rounding))
                for g in scales}
        reads = {c.node: _reads_of_live(cg, c, live) for c in cg.consumers}
        return Plan(live, reads)
    return _unconstrained_plan(model, cg, ratio_in, scores, multiple, allocation == "budgeted")


def group_multiples(cg: ChannelGraph, multiple: int) -> dict[int, int]:
    """Group -> the channel multiple its live count is rounded to.

    A group repeated k times in one tensor (the chunks of a grouped Conv, halves joined by a gate)
    makes it k times as wide, so multiple / k (at least 1) keeps that tensor aligned.
    """
    copies = dict.fromkeys(cg.groups(), 1)
    for layout in cg.layouts.values():
        count: dict[int, int] = {}
        for space in layout.pieces:
            g = cg.group(space)
            count[g] = count.get(g, 0) + 1
        for g, k in count.items():
            copies[g] = max(copies[g], k)
    return {g: max(1, multiple // k) for g, k in copies.items()}


def channel_macs(model: ir.Model, cg: ChannelGraph) -> dict[int, float]:
    """Group -> MACs per live channel spent computing it (its producers' rows, depthwise convs on it)."""
    nodes = {n.name: n for n in model.graph}
    macs: dict[int, float] = {}

    def add(node_name: str, rows: int, space: int) -> None:
        node = nodes[node_name]
        out = static_shape(node.outputs[0])
        weight = input_of(node, 1).const_value
        if out and weight is not None and rows:
            g = cg.group(space)
            macs[g] = macs.get(g, 0.0) + math.prod(out) / rows * weight.size / rows

    for prod in cg.producers:
        for space in prod.spaces:
            add(prod.node, cg.width(Layout(0, prod.spaces)), space)
    for use in cg.params:
        layout = cg.layouts[use.value]
        if nodes[use.node].op_type in ("Conv", "ConvTranspose") and use.input_index == 1 and use.axis == 0 \
                and use.layout is None and len(layout.pieces) == 1:
            add(use.node, cg.space_sizes[layout.pieces[0]], layout.pieces[0])
    return macs


def _group_problems(model: ir.Model, cg: ChannelGraph, ratio_of: Callable[[str, int], float],
                    scores: dict[str, np.ndarray], multiple: int, energy: bool,
                    ) -> tuple[list[int], list[GroupProblem], list[list[tuple[str, np.ndarray]]]]:
    """Per read group: its id, its problem, and (consumer, positions in the consumer's input) per reader.

    Reader values are each consumer's scores over their mean, or with ``energy`` its share of the
    consumer's output energy (score^2 over the sum), which compares across layers.
    """
    frozen = cg.frozen_groups()
    costs = channel_macs(model, cg)
    members: dict[int, list[tuple[Consumer, np.ndarray]]] = {}
    for c in cg.consumers:
        groups = np.array([g for g, _ in positions(cg, c.layout)])
        for g in dict.fromkeys(groups.tolist()):
            members.setdefault(g, []).append((c, np.flatnonzero(groups == g)))
    ids, problems, where = [], [], []
    for g, items in members.items():
        readers = []
        for c, pos in items:
            ratio = ratio_of(c.node, g)
            value = scores[c.node] ** 2 / max(float((scores[c.node] ** 2).sum()), 1e-30) if energy \
                else _unit(scores[c.node])
            cols = np.array([i for _, i in positions(cg, c.layout)])[pos]
            readers.append(Reader(cols, value[pos], c.macs / max(cg.width(c.layout), 1),
                                  round_keep(len(pos), ratio, multiple), pinned=ratio <= 0))
        ids.append(g)
        problems.append(GroupProblem(cg.space_sizes[g], costs.get(g, 0.0), readers, g in frozen))
        where.append([(c.node, pos) for c, pos in items])
    return ids, problems, where


def _assemble(cg: ChannelGraph, ids: list[int], where: list[list[tuple[str, np.ndarray]]],
              solutions: list[tuple[np.ndarray, list[np.ndarray]]]) -> Plan:
    live = {g: np.arange(cg.space_sizes[g]) for g in cg.groups()}
    picked: dict[str, list[np.ndarray]] = {c.node: [] for c in cg.consumers}
    for g, items, (group_live, reads) in zip(ids, where, solutions, strict=True):
        live[g] = group_live
        for (node, pos), sel in zip(items, reads, strict=True):
            picked[node].append(pos[sel])
    reads_of = {node: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
                for node, parts in picked.items()}
    return Plan(live, reads_of)


def _unconstrained_plan(model: ir.Model, cg: ChannelGraph, ratio_of: Callable[[str, int], float],
                        scores: dict[str, np.ndarray], multiple: int, budgeted: bool) -> Plan:
    """Per group, ``_prune_budget.solve_group`` (budgeted) or each consumer's own best reads."""
    ids, problems, where = _group_problems(model, cg, ratio_of, scores, multiple, energy=False)
    multiples = group_multiples(cg, multiple)
    solve = (lambda g, p: solve_group(p.size, p.channel_cost, p.readers, p.frozen, multiples[g])) if budgeted \
        else (lambda g, p: own_reads(p.size, p.readers, p.frozen, multiples[g]))
    solutions = [_shared_choice(p, min(ratio_of(node, g) for node, _ in items), multiples[g]) if _repeated(p)
                 else solve(g, p) for g, p, items in zip(ids, problems, where, strict=True)]
    return _assemble(cg, ids, where, solutions)


def _repeated(problem: GroupProblem) -> bool:
    """Whether some consumer reads a channel of the group more than once (grouped-Conv chunks, gated halves).

    The budgets count reads as channels, so such a group gets one shared mask at its consumers'
    ratios, as in constrained mode, whatever the allocation.
    """
    return any(len(np.unique(r.channels)) < len(r.channels) for r in problem.readers)


def _shared_choice(problem: GroupProblem, ratio: float, multiple: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The constrained choice for one group: its best channels by summed reader value, read by all."""
    score = np.zeros(problem.size)
    for r in problem.readers:
        np.add.at(score, r.channels, r.values)
    pinned = problem.frozen or any(r.pinned for r in problem.readers)
    live = _top(score, problem.size if pinned else round_keep(problem.size, ratio, multiple))
    return live, [np.flatnonzero(np.isin(r.channels, live)) for r in problem.readers]


def _global_plan(model: ir.Model, cg: ChannelGraph, ratio_of: Callable[[str, int], float],
                 scores: dict[str, np.ndarray], multiple: int, shared: bool) -> Plan:
    """One MAC price for the whole model (``_prune_budget.solve_global``), shared masks or not."""
    ids, problems, where = _group_problems(model, cg, ratio_of, scores, multiple, energy=True)
    multiples = group_multiples(cg, multiple)
    solutions = [_shared_choice(p, min(ratio_of(node, g) for node, _ in items), multiples[g]) if _repeated(p) else sol
                 for g, p, items, sol in zip(ids, problems, where, solve_global(problems, shared, multiple),
                                             strict=True)]
    return _assemble(cg, ids, where, solutions)


def _reads_of_live(cg: ChannelGraph, consumer: Consumer, live: dict[int, np.ndarray]) -> np.ndarray:
    keep = {g: set(idx.tolist()) for g, idx in live.items()}
    return np.array([p for p, (g, i) in enumerate(positions(cg, consumer.layout)) if i in keep[g]],
                    dtype=np.int64)


def zero_pruned(model: ir.Model, cg: ChannelGraph, plan: Plan) -> None:
    """Zero, in place, every weight slice the plan removes (dead producer rows, unread consumer columns).

    The result has the original structure; pruning it with the same plan must not change its outputs.
    """
    for prod in cg.producers:
        dead = _dead(cg, plan, Layout(0, prod.spaces))
        _zero(model, prod.weight, prod.w_axis, dead)
        if prod.bias is not None:
            _zero(model, prod.bias, -1, dead)
    nodes = {n.name: n for n in model.graph}
    for use in cg.params:
        if use.layout is not None:  # a grouped Conv sums over these channels: dead ones must add nothing
            _zero(model, name_of(input_of(nodes[use.node], use.input_index)), use.axis, _dead(cg, plan, use.layout))
    for c in cg.consumers:
        unread = np.setdiff1d(np.arange(cg.width(c.layout)), plan.reads[c.node])
        features = (unread[:, None] * c.layout.inner + np.arange(c.layout.inner)).ravel()
        _zero(model, c.weight, c.w_axis, features)


def _dead(cg: ChannelGraph, plan: Plan, layout: Layout) -> np.ndarray:
    """Positions in a layout of the channels the plan drops."""
    bounds = cg.offsets(layout)
    parts = [start + np.setdiff1d(np.arange(cg.space_sizes[s]), plan.live[cg.group(s)])
             for s, start in zip(layout.pieces, bounds, strict=False)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _zero(model: ir.Model, name: str, axis: int, index: np.ndarray) -> None:
    value = model.graph.initializers[name]
    array = const_array(value).copy()
    slicer: list[slice | np.ndarray] = [slice(None)] * array.ndim
    slicer[axis] = index
    array[tuple(slicer)] = 0
    value.const_value = ir.Tensor(array, name=name)
