"""Unconstrained (UPSCALE) channel choice for one channel group, as a knapsack under a MAC budget.

In a group read by several consumers (a residual stream, a concatenated feature map, a hidden state
under a LayerNorm), constrained pruning keeps one set L of live channels and every consumer reads
all of L. Unconstrained pruning lets consumer j read its own subset R_j; the producers then compute
the union L = U R_j. Comparing the two at the same ratio is unfair to constrained pruning (the union
costs producer MACs), so each group gets the MACs the constrained choice would spend at the
consumers' ratios:

    budget = P * max_j k_j + sum_j C_j * k_j      (P: producer MACs per live channel,
                                                   C_j: consumer j's MACs per read channel,
                                                   k_j: the reads consumer j's ratio grants)

and the reads maximize the kept importance sum_j sum_{i in R_j} v_j(i) within it. That is a
knapsack with a set-up cost per channel (P, paid once when the first consumer reads it). It is
solved by Lagrangian relaxation: at a price lam per MAC, consumer j reads i when v_j(i) >= lam C_j,
and channel i goes live when its reads' surplus sum (v - lam C) covers lam P. The cost falls as lam
rises, so lam is bisected to the cheapest price that fits the budget, and the budget left over is
filled greedily by value per MAC. The shared-mask (constrained) choice is one point of the same
space: it is kept whenever it holds at least as much importance, so on the importance objective
the unconstrained plan is never worse than the constrained one at equal MACs, and a group with a
single consumer gets the constrained choice exactly.

Frozen groups (channels that must stay whole and in order, such as a hidden state under a LayerNorm)
keep every channel live. The constrained mask reads them whole, so a budgeted plan does too; the
global allocation (below) and UPSCALE's per-consumer masks may let their consumers read fewer.

``solve_global`` prices MACs once for the whole model instead of per group, so layers lose channels
where they cost the least importance per MAC saved (the budget is what the uniform constrained plan
spends, counted linearly: each channel at its layers' unpruned widths, so the real MACs come out
lower where a layer loses input and output channels together). Importances must then compare
across layers: the plan passes each consumer's share of its output energy per input channel (LAMP's
idea, per channel). The same price applied to shared masks gives the constrained counterpart, so the
two modes can be compared with the same allocation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

BISECTION_STEPS = 60


@dataclasses.dataclass(frozen=True)
class Reader:
    """One consumer's reads of one group: the group channel and importance of each candidate read."""

    channels: np.ndarray
    values: np.ndarray
    cost: float  # MACs per read channel
    keep: int  # reads its ratio grants; they set the budget
    pinned: bool = False  # ratio 0: reads every candidate


def _cost(live: np.ndarray, reads: list[np.ndarray], readers: list[Reader], channel_cost: float) -> float:
    return channel_cost * int(live.sum()) + sum(r.cost * int(sel.sum()) for r, sel in zip(readers, reads, strict=True))


def _value(reads: list[np.ndarray], readers: list[Reader]) -> float:
    return float(sum(r.values[sel].sum() for r, sel in zip(readers, reads, strict=True)))


def _at_price(lam: float, size: int, channel_cost: float, readers: list[Reader], frozen: bool,
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Reads and live channels that maximize value - lam * MACs."""
    wanted = [r.pinned | (r.values >= lam * r.cost) for r in readers]
    surplus = np.zeros(size)
    pinned = np.zeros(size, dtype=bool)
    for r, sel in zip(readers, wanted, strict=True):
        np.add.at(surplus, r.channels[sel], (r.values - lam * r.cost)[sel])
        if r.pinned:
            pinned[r.channels] = True
    live = np.ones(size, dtype=bool) if frozen else (surplus > 0) & (surplus >= lam * channel_cost) | pinned
    return live, [sel & live[r.channels] for r, sel in zip(readers, wanted, strict=True)]


def _fill(live: np.ndarray, reads: list[np.ndarray], readers: list[Reader], channel_cost: float,
          room: float) -> None:
    """Add the reads with the most value per MAC that still fit in ``room`` (in place)."""
    offers = [(r.values[p] / (r.cost + (0.0 if live[r.channels[p]] else channel_cost)), k, p)
              for k, (r, sel) in enumerate(zip(readers, reads, strict=True)) for p in np.flatnonzero(~sel)]
    for _, k, p in sorted(offers, key=lambda t: -t[0]):
        r = readers[k]
        extra = r.cost + (0.0 if live[r.channels[p]] else channel_cost)
        if not reads[k][p] and extra <= room:
            reads[k][p] = True
            live[r.channels[p]] = True
            room -= extra


def _round_reads(live: np.ndarray, reads: list[np.ndarray], readers: list[Reader], multiple: int) -> None:
    """Round each consumer's reads to the nearest channel multiple (at least one), by value (in place).

    Nearest, not up: rounding every consumer up would overspend the budget the reads were fit to.
    """
    for r, sel in zip(readers, reads, strict=True):
        count = int(sel.sum())
        if r.pinned or count == len(sel):
            continue  # reading everything needs no selection, whatever the multiple
        want = min(len(sel), max(multiple, round(count / multiple) * multiple))
        if want < count:
            chosen = np.flatnonzero(sel)
            sel[chosen[np.argsort(r.values[chosen], kind="stable")[: count - want]]] = False
            continue
        for p in np.argsort(-(r.values + live[r.channels] * (r.values.max(initial=0) + 1)), kind="stable"):
            if int(sel.sum()) >= want:
                break
            sel[p] = True
            live[r.channels[p]] = True


def _pad_live(live: np.ndarray, reads: list[np.ndarray], readers: list[Reader], multiple: int, frozen: bool) -> None:
    """Live = what some consumer reads, rounded up to the channel multiple with the best unread channels.

    Odd widths cost more than they save. Frozen groups keep every channel.
    """
    if frozen:
        return
    live[:] = False
    for r, sel in zip(readers, reads, strict=True):
        live[r.channels[sel]] = True
    want = min(len(live), math.ceil(int(live.sum()) / multiple) * multiple)
    total = np.zeros(len(live))
    for r in readers:
        np.add.at(total, r.channels, r.values)
    for i in np.argsort(-total, kind="stable"):
        if int(live.sum()) >= want:
            break
        live[i] = True


def _shared(size: int, readers: list[Reader], keep: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The constrained choice: the ``keep`` channels of highest summed importance, read by everyone."""
    total = np.zeros(size)
    for r in readers:
        np.add.at(total, r.channels, r.values)
    live = np.zeros(size, dtype=bool)
    live[np.argsort(-total, kind="stable")[:keep]] = True
    return live, [live[r.channels].copy() for r in readers]


@dataclasses.dataclass(frozen=True)
class GroupProblem:
    """One channel group: its size, producer MACs per live channel, its readers, whether it is frozen."""

    size: int
    channel_cost: float
    readers: list[Reader]
    frozen: bool

    def shared_cost(self) -> float:
        """MACs of the uniform constrained choice: every reader reads the largest reader's keep."""
        if self.frozen:
            return sum(r.cost * len(r.values) for r in self.readers)
        keep = max(r.keep for r in self.readers)
        return self.channel_cost * keep + sum(r.cost * min(keep, len(r.values)) for r in self.readers)


def _shared_at_price(lam: float, g: GroupProblem) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shared masks at price ``lam``: a channel is live (for every reader) when its summed value pays its MACs."""
    if g.frozen:
        return np.ones(g.size, dtype=bool), [np.ones(len(r.values), dtype=bool) for r in g.readers]
    value = np.zeros(g.size)
    cost = np.full(g.size, g.channel_cost)
    pinned = np.zeros(g.size, dtype=bool)
    for r in g.readers:
        np.add.at(value, r.channels, r.values)
        np.add.at(cost, r.channels, r.cost)
        if r.pinned:
            pinned[r.channels] = True
    live = (value >= lam * cost) | pinned
    return live, [live[r.channels].copy() for r in g.readers]


def solve_global(problems: list[GroupProblem], shared: bool, multiple: int,
                 ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """One MAC price for every group, bisected to the uniform constrained plan's total MACs."""
    budget = sum(g.shared_cost() for g in problems)

    def at(lam: float) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        return [_shared_at_price(lam, g) if shared else _at_price(lam, g.size, 0.0 if g.frozen else g.channel_cost,
                                                                     g.readers, g.frozen) for g in problems]

    def total(solution: list[tuple[np.ndarray, list[np.ndarray]]]) -> float:
        return sum(_cost(live, reads, g.readers, 0.0 if g.frozen else g.channel_cost)
                   for g, (live, reads) in zip(problems, solution, strict=True))

    lo, hi = 0.0, max((float((r.values / max(r.cost, 1e-12)).max(initial=0)) for g in problems for r in g.readers),
                      default=0.0) * 2 + 1e-12
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if total(at(mid)) <= budget else (mid, hi)
    out = []
    for g, (live, reads) in zip(problems, at(hi), strict=True):
        if shared:
            live, reads = _round_shared(live, g, multiple)
        else:
            _round_reads(live, reads, g.readers, multiple)
            _pad_live(live, reads, g.readers, multiple, g.frozen)
        out.append((np.flatnonzero(live), [np.flatnonzero(sel) for sel in reads]))
    return out


def _round_shared(live: np.ndarray, g: GroupProblem, multiple: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A shared mask rounded to the nearest channel multiple (at least one) by summed value; all read it."""
    if not g.frozen and int(live.sum()) < g.size:
        want = min(g.size, max(multiple, round(int(live.sum()) / multiple) * multiple))
        value = np.zeros(g.size)
        for r in g.readers:
            np.add.at(value, r.channels, r.values)
        pinned = np.zeros(g.size, dtype=bool)
        for r in g.readers:
            if r.pinned:
                pinned[r.channels] = True
        rank = np.argsort(-(value + live * (value.max(initial=0) + 1) + pinned * 2 * (value.max(initial=0) + 1)),
                          kind="stable")
        live = np.zeros(g.size, dtype=bool)
        live[rank[: max(want, int(pinned.sum()))]] = True
    return live, [live[r.channels].copy() for r in g.readers]


def own_reads(size: int, readers: list[Reader], frozen: bool, multiple: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """UPSCALE as published: each consumer reads its ``keep`` best channels; producers compute the union."""
    reads = []
    for r in readers:
        sel = np.ones(len(r.values), dtype=bool)
        if not r.pinned:
            sel[:] = False
            sel[np.argsort(-r.values, kind="stable")[: r.keep]] = True
        reads.append(sel)
    live = np.ones(size, dtype=bool) if frozen else np.zeros(size, dtype=bool)
    for r, sel in zip(readers, reads, strict=True):
        live[r.channels[sel]] = True
    _pad_live(live, reads, readers, multiple, frozen)
    return np.flatnonzero(live), [np.flatnonzero(sel) for sel in reads]


def solve_group(size: int, channel_cost: float, readers: list[Reader], frozen: bool, multiple: int,
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Live channels (sorted indices) and, per reader, the candidate reads it keeps (sorted indices)."""
    if frozen:  # the constrained mask reads a frozen group whole: so does its budget
        return np.arange(size), [np.arange(len(r.values)) for r in readers]
    shared_keep = max(r.keep for r in readers)
    budget = channel_cost * shared_keep + sum(r.cost * r.keep for r in readers)
    lo, hi = 0.0, max(float((r.values / max(r.cost, 1e-12)).max(initial=0)) for r in readers) * 2 + 1e-12
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if _cost(*_at_price(mid, size, channel_cost, readers, False), readers, channel_cost) <= budget:
            hi = mid
        else:
            lo = mid
    live, reads = _at_price(hi, size, channel_cost, readers, False)
    _fill(live, reads, readers, channel_cost, budget - _cost(live, reads, readers, channel_cost))
    shared_live, shared_reads = _shared(size, readers, shared_keep)
    if _value(shared_reads, readers) >= _value(reads, readers) - 1e-9 * abs(_value(reads, readers)):
        live, reads = shared_live, shared_reads
    _round_reads(live, reads, readers, multiple)
    _pad_live(live, reads, readers, multiple, False)
    return np.flatnonzero(live), [np.flatnonzero(sel) for sel in reads]
