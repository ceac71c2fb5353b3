"""Search strategies over a ``SearchSpace``: latency-landing branch and bound, and random search.

Both speak ask/tell: ``ask(n)`` proposes candidates, ``tell`` hands back their evaluations. The method
(anchors, landing by regula falsi, branch and bound, depth bisection, refinement) is argued in docs/search.md.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from edgec.compiler.search.objective import HEADROOM, TIE, Evaluation, Objective
from edgec.compiler.search.space import PRECISION, Candidate, SearchKnob, SearchSpace, candidate_key

AIM = 0.94  # where landing steps aim: the middle of the window [0.90 T, 0.98 T]
# A landing stops in [0.92 T, 0.98 T]: a point at 0.90-0.92 T is in the window but one noisy re-measure
# from under it (ResNet-50 at 0.3x: 0.903 in the search, 0.883 timed again), so it probes on if it can.
LANDED = 0.92
FIXED_SHARE = 0.15  # prior share of latency pruning cannot remove, before any landing has measured it
RATIO_RESOLUTION = 0.01  # below this the channel counts (rounded to the target's multiple) stop changing
MAX_PROBES = 6  # per combination: the anchor and up to five landing steps
REACH_SLACK = 0.9  # pruning may reach 10% further in one combination than it did in another


class Strategy(Protocol):
    """Proposes candidates and learns from their evaluations."""

    def ask(self, n: int) -> list[Candidate]:
        """Up to ``n`` new candidates; an empty list ends the search."""
        ...

    def tell(self, evaluations: Sequence[Evaluation]) -> None:
        """Evaluations of the candidates last asked for."""
        ...


def _fit_ratio(points: Sequence[tuple[float, float]], aim: float, fixed_share: float = FIXED_SHARE) -> float | None:
    """Ratio where a + b(1-r)^2 reaches ``aim``: through two points, or one and the fixed share ``a / (a + b)``."""
    if len(points) >= 2:
        (r1, l1), (r2, l2) = points[0], points[1]
        denom = (1 - r1) ** 2 - (1 - r2) ** 2
        if abs(denom) < 1e-12 or (l1 - l2) / denom <= 0:
            return None
        b = (l1 - l2) / denom
        a = l1 - b * (1 - r1) ** 2
    else:
        r1, l1 = points[0]
        full = l1 / (fixed_share + (1 - fixed_share) * (1 - r1) ** 2)
        a, b = fixed_share * full, (1 - fixed_share) * full
    share = (aim - a) / b
    return 1.0 - math.sqrt(share) if share > 0 else None


def _spread(values: Sequence[Any]) -> list[Any]:
    """``values`` reordered: first, last, then midpoints of the widest gaps (coarse to fine)."""
    if len(values) <= 2:
        return list(values)
    order, spans = [0, len(values) - 1], [(0, len(values) - 1)]
    while spans:
        lo, hi = spans.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(mid)
            spans += [(lo, mid), (mid, hi)]
    return [values[i] for i in order]


class _Lander:
    """Lands the channel ratio of one combination on the objective's boundary."""

    def __init__(self, combo: Candidate, knob: SearchKnob | None, objective: Objective, first: float, order: float):
        self.combo, self.knob, self.objective = combo, knob, objective
        self.first, self.order = first, order
        self.points: list[tuple[float, Evaluation]] = []
        self.done = False
        self.fixed_share = FIXED_SHARE  # the strategy updates it from other combinations' landings

    def add(self, ratio: float, evaluation: Evaluation) -> None:
        """Record a probe; failures end the combination (its pass refuses this model)."""
        self.points.append((ratio, evaluation))
        if not evaluation.ok:
            self.done = True

    def bound(self) -> float | None:
        """Upper bound on the accuracy of any feasible point left in this combination."""
        slow = [(r, e.score) for r, e in self.points if e.ok and not self.objective.fits_latency(e)]
        return max(slow)[1] if slow else None

    def next_ratio(self) -> float | None:
        """The next ratio to probe, or None when this combination is settled."""
        if self.done or len(self.points) >= MAX_PROBES:
            return None
        if not self.points:
            return self.first
        if self.knob is None:
            return None
        step = self._latency_step() if self.objective.latency_ms is not None else self._drop_step()
        if step is None or any(abs(step - r) < 1e-9 for r, _ in self.points):
            self.done = True
            return None
        return round(step, 3)

    def _snap(self, guess: float, lo: float, hi: float) -> float | None:
        """A ratio strictly inside (lo, hi) near ``guess`` that builds a model neither end built, or None.

        With the knob's breakpoints known, this is the breakpoint at or below ``guess`` (the model
        ``guess`` itself would build); None once no breakpoint is left inside: the bracket has converged.
        """
        assert self.knob is not None
        points = (float(self.knob.low), *self.knob.breakpoints)  # the lowest value builds a model too
        if len(points) == 1:
            return min(max(guess, lo + RATIO_RESOLUTION), hi - RATIO_RESOLUTION) if hi - lo >= 2 * RATIO_RESOLUTION \
                else None
        inside = [b for b in points if lo + 1e-9 < b < hi - 1e-9]
        below = [b for b in inside if b <= guess + 1e-9]
        return (max(below) if below else min(inside)) if inside else None

    def _latency_step(self) -> float | None:
        target = self.objective.latency_ms
        assert target is not None and self.knob is not None
        if any(LANDED * target <= e.ms <= HEADROOM * target and self.objective.fits_drop(e) for _, e in self.points):
            return None  # landed, with margins inside the window for the noise of the final measurement
        if any(not self.objective.fits_latency(e) and not self.objective.fits_drop(e) for _, e in self.points):
            return None  # too slow and already over the drop: more pruning only loses more
        fast = [(r, e.ms) for r, e in self.points if self.objective.fits_latency(e)]
        slow = [(r, e.ms) for r, e in self.points if e.ok and not self.objective.fits_latency(e)]
        lo, hi = max(slow, default=None), min(fast, default=None)
        low, high = float(self.knob.low), float(self.knob.high)
        if hi is None:  # everything so far too slow: aim beyond, up to the largest ratio
            top = max(r for r, _ in slow)
            guess = _fit_ratio(sorted(slow)[-2:], AIM * target, self.fixed_share)
            if guess is None:  # the fit puts the target out of pruning's reach: the largest ratio decides
                guess = high
            return self._snap(min(guess, high), top, high + 1e-6)
        if lo is None:  # fast but under the window: a smaller ratio is more accurate
            lo = (low - 1e-6, math.inf)
        aim = AIM * target
        retained = self._retained_side()
        if retained == "slow" and math.isfinite(lo[1]):  # Illinois: halve the stuck end's distance to the aim
            lo = (lo[0], aim + (lo[1] - aim) / 2)
        elif retained == "fast":
            hi = (hi[0], aim + (hi[1] - aim) / 2)
        guess = _fit_ratio([lo, hi], aim) if math.isfinite(lo[1]) else None
        width = hi[0] - lo[0]
        if guess is None:
            guess = (lo[0] + hi[0]) / 2
        # Regula falsi, kept off the bracket's ends so a flat stretch of latency cannot stall it.
        return self._snap(min(max(guess, lo[0] + 0.2 * width), hi[0] - 0.2 * width), lo[0], hi[0])

    def _retained_side(self) -> str | None:
        """Which end of the bracket the last two probes left in place ("slow" or "fast"), if one did.

        On a latency curve bent more than the model, interpolation keeps landing on one side and
        never moves the other end (ResNet-50 at 0.3x: 0.54, then 0.524, both fast, against 0.469
        slow); the Illinois rule then halves that end's distance to the aim, so the next step crosses.
        """
        if len(self.points) < 3:
            return None
        last, before = (self.objective.fits_latency(e) for _, e in self.points[-2:])
        if last != before:
            return None
        return "slow" if last else "fast"

    def _drop_step(self) -> float | None:
        assert self.knob is not None
        good = [r for r, e in self.points if self.objective.fits_drop(e)]
        bad = [r for r, e in self.points if not self.objective.fits_drop(e)]
        low, high = float(self.knob.low), float(self.knob.high)
        lo, hi = max(good, default=None), min(bad, default=None)
        if lo is None:  # over the drop already at the smallest ratio probed: try less pruning
            return low if min(bad) > low + 1e-9 else None
        if hi is None:  # within the drop so far: try the most pruning first
            return self._snap(high, lo, high + 1e-6)
        return self._snap((lo + hi) / 2, lo, hi)


class GuidedStrategy:
    """Anchors, landing by regula falsi, branch and bound across combinations, greedy refinement.

    The first continuous knob is landed (the ratio); every other ordered knob is a level (blocks dropped):
    each combination of levels is anchored, coarse to fine, and skipped levels are opened by bisection.
    """

    def __init__(self, space: SearchSpace, objective: Objective, budget: int, seed: int = 0) -> None:
        self.space, self.objective, self.budget = space, objective, budget
        self.ratio_knob = next((k for k in space.knobs if k.continuous), None)
        self.level_knobs = [k for k in space.knobs if k.ordered and k is not self.ratio_knob]
        # Anchors sit at the smallest ratio: the slowest and most accurate point of their combination.
        self.anchor_ratio = float(self.ratio_knob.low) if self.ratio_knob is not None else 0.0
        self.results: dict[Any, Evaluation] = {}
        self.landers: list[_Lander] = []
        self.pending: dict[Any, list[tuple[_Lander, float]]] = {}
        self.refined: set[Any] = set()
        self._anchors_asked = False

    # -- combinations -------------------------------------------------------------------------
    def _ratio_key(self) -> str | None:
        return self.ratio_knob.key if self.ratio_knob is not None else None

    def _with_ratio(self, combo: Candidate, ratio: float) -> Candidate:
        key = self._ratio_key()
        return {**combo, key: ratio} if key in combo else dict(combo)

    def _combo_key(self, combo: Candidate) -> Any:
        return candidate_key({k: v for k, v in combo.items() if k != self._ratio_key()})

    def _anchor_combos(self) -> list[Candidate]:
        """Precision x levels (blocks dropped) at the smallest ratio, at most half the budget.

        Levels go in the order the smallest, the largest, then halving the gaps, each with every
        precision: a short budget keeps the whole-width anchors (the ones channel pruning lands from)
        and the extremes, and loses the levels in between first.
        """
        precision = self.space.knob(PRECISION)
        precisions = precision.choices if precision is not None else (None,)
        levels = [_spread(sorted(knob.choices)) for knob in self.level_knobs]
        base = self.space.default()
        combos = []
        for *values, value in itertools.product(*levels, precisions):
            combo = dict(base)
            if precision is not None:
                combo[PRECISION] = value
            for knob, level in zip(self.level_knobs, values, strict=True):
                combo[knob.key] = level
            combos.append(self.space.canonical(combo))
        return combos[:max(1, self.budget // 2)]

    def _new_lander(self, combo: Candidate, first: float, order: float) -> None:
        key = self._combo_key(combo)
        if any(self._combo_key(lander.combo) == key for lander in self.landers):
            return
        self.landers.append(_Lander(combo, self.ratio_knob, self.objective, first, order))

    # -- ask / tell ---------------------------------------------------------------------------
    def ask(self, n: int) -> list[Candidate]:
        """Next probes: landings by priority, then refinements of the incumbent."""
        if not self._anchors_asked:
            self._anchors_asked = True
            for i, combo in enumerate(self._anchor_combos()):
                self._new_lander(combo, self.anchor_ratio, order=-1e9 + i)
        self._open_depth_levels()
        batch: list[Candidate] = []
        while True:  # once every landing has settled: skipped depth levels, then refinement, or the end
            self._fill(batch, n)
            if batch or not (self._open_depth_levels() or self._refine()):
                return batch

    def _fill(self, batch: list[Candidate], n: int) -> None:
        busy = {id(lander) for entries in self.pending.values() for lander, _ in entries}
        for lander in sorted(self.landers, key=self._priority):
            if len(batch) >= n:
                return
            if id(lander) in busy or lander.done or self._pruned(lander):
                continue
            lander.fixed_share = self._fixed_share()
            while (ratio := lander.next_ratio()) is not None:
                candidate = self.space.canonical(self._with_ratio(lander.combo, ratio))
                key = candidate_key(candidate)
                if key in self.results:
                    lander.add(ratio, self.results[key])
                    continue
                self.pending.setdefault(key, []).append((lander, ratio))
                if len(self.pending[key]) == 1:
                    batch.append(candidate)
                break

    def _priority(self, lander: _Lander) -> tuple[float, float, float]:
        """Unprobed combinations first (their bound is unknown), then best bound first."""
        anchor = next((e for r, e in lander.points if e.ok), None)
        if anchor is None:
            return (0.0, lander.order, 0.0)
        if self.objective.latency_ms is not None:
            return (1.0, -anchor.score, lander.order)
        return (1.0, anchor.ms, lander.order)

    def _open_depth_levels(self) -> bool:
        """Open a level the anchors skipped where the objective changes between two anchored ones.

        Accuracy and latency both fall with the blocks dropped, so under a latency target the level
        to land is the shallowest that can meet it: when one anchored level cannot (every probe too
        slow) and the next deeper one can, the middle level between them is opened (BERT-like at
        0.25x: two blocks dropped stays too slow at any ratio, four land far under the target, three
        is where the most accurate model is). Under ``--max-drop`` alone, mirrored: the deepest
        level within the drop. False when nothing new was opened.
        """
        opened = False
        for depth in self.level_knobs:
            groups: dict[Any, dict[Any, _Lander]] = {}
            for lander in self.landers:
                rest = candidate_key({k: v for k, v in lander.combo.items() if k not in (self._ratio_key(), depth.key)})
                groups.setdefault(rest, {})[lander.combo.get(depth.key, depth.low)] = lander
            for levels in groups.values():
                anchored = sorted(levels)
                for shallow, deep in itertools.pairwise(anchored):
                    skipped = [d for d in sorted(depth.choices) if shallow < d < deep]
                    if skipped and self._objective_changes(levels[shallow], levels[deep]):
                        combo = {**levels[shallow].combo, depth.key: skipped[len(skipped) // 2]}
                        before = len(self.landers)
                        self._new_lander(self.space.canonical(combo), self.anchor_ratio, order=len(self.landers))
                        opened = opened or len(self.landers) > before
        return opened

    def _objective_changes(self, shallow: _Lander, deep: _Lander) -> bool:
        """The shallower level has not met the latency target so far and the deeper one has (or the drop, mirrored).

        Checked before the shallower level's landing has settled: the level between is worth its
        anchor build either way, and waiting would spend the budget on hopeless landings first.
        """
        def feasible(lander: _Lander) -> bool:
            return any(self.objective.feasible(e) for _, e in lander.points)

        if not shallow.points or not deep.points:
            return False
        if self.objective.latency_ms is not None:
            return not feasible(shallow) and feasible(deep)
        return feasible(shallow) and not feasible(deep)

    def _fixed_share(self) -> float:
        """The share of latency pruning leaves, a / (a + b), fitted on the landings so far (median); else the prior.

        The prior (15%) suits convolutional nets; BERT-like keeps ~70% (attention and the frozen
        hidden width), and a first step from the prior there barely moves the latency.
        """
        shares = []
        for lander in self.landers:
            if not lander.points or lander.points[0][0] != self.anchor_ratio or not lander.points[0][1].ok:
                continue
            anchor = lander.points[0][1]
            for ratio, e in lander.points[1:]:
                kept = (1 - ratio) ** 2
                if e.ok and kept < 1 - 1e-6:
                    shares.append(min(max((e.ms / anchor.ms - kept) / (1 - kept), 0.0), 0.95))
        return statistics.median(shares) if shares else FIXED_SHARE

    def _pruning_reach(self) -> float | None:
        """The smallest latency fraction pruning reached in any combination: at its largest ratio over its anchor."""
        assert self.ratio_knob is not None
        top = float(self.ratio_knob.high) - 2 * RATIO_RESOLUTION
        fractions = [e.ms / anchor.ms for lander in self.landers
                     if lander.points and lander.points[0][0] == self.anchor_ratio
                     and (anchor := lander.points[0][1]).ok
                     for r, e in lander.points[1:] if e.ok and r >= top]
        return min(fractions, default=None)

    def _out_of_reach(self, lander: _Lander) -> bool:
        """The combination's anchor times pruning's reach elsewhere (less ``REACH_SLACK``) still misses the target.

        Pruning saves a similar share of latency at every depth and precision of one model (BERT-like
        at the largest ratio: 20% int8, 32% fp32), so a combination that would need more is not landed:
        without this, every too-slow shallow combination spends two or three builds finding that out.
        """
        target = self.objective.latency_ms
        if target is None or self.ratio_knob is None or not lander.points or lander.points[0][0] != self.anchor_ratio:
            return False
        anchor = lander.points[0][1]
        reach = self._pruning_reach()
        return anchor.ok and reach is not None and anchor.ms * reach * REACH_SLACK > HEADROOM * target

    def _pruned(self, lander: _Lander) -> bool:
        """Branch and bound: this combination cannot beat the incumbent any more, or cannot reach the target."""
        if self._out_of_reach(lander):
            return True
        incumbent = self.objective.best(list(self.results.values()))
        evaluated = [e for _, e in lander.points if e.ok]
        if incumbent is None or not evaluated:
            return False
        if self.objective.latency_ms is not None:
            bound = lander.bound()
            return bound is not None and bound < incumbent.score - TIE
        # Feasible ratios lie below every over-the-drop probe, so they run no faster than the slowest of those.
        over = [e.ms for _, e in lander.points if e.ok and not self.objective.fits_drop(e)]
        return bool(over) and max(over) >= incumbent.ms

    def _refine(self) -> bool:
        """Open landers for one-knob changes of the incumbent's categoricals; False if none is new."""
        evaluations = [e for e in self.results.values() if e.ok]
        incumbent = self.objective.best(evaluations) or (min(evaluations, key=lambda e: e.ms)
                                                         if evaluations else None)
        if incumbent is None or self._combo_key(incumbent.candidate) in self.refined:
            return False
        self.refined.add(self._combo_key(incumbent.candidate))
        key = self._ratio_key()
        ratio = incumbent.candidate.get(key, self.anchor_ratio) if key is not None else self.anchor_ratio
        opened = False
        for knob in self.space.knobs:
            if knob.ordered or knob.key == PRECISION or not self.space.applicable(knob, incumbent.candidate):
                continue
            for value in knob.choices:
                if value == incumbent.candidate[knob.key]:
                    continue
                combo = self.space.canonical({**incumbent.candidate, knob.key: value})
                before = len(self.landers)
                self._new_lander(combo, ratio, order=len(self.landers))
                opened = opened or len(self.landers) > before
        return opened

    def tell(self, evaluations: Sequence[Evaluation]) -> None:
        """Record results and hand each to the landers that asked for it."""
        for evaluation in evaluations:
            key = candidate_key(evaluation.candidate)
            self.results[key] = evaluation
            for lander, ratio in self.pending.pop(key, []):
                lander.add(ratio, evaluation)


class RandomStrategy:
    """Uniform draws over the declared choices, never the same candidate twice."""

    def __init__(self, space: SearchSpace, objective: Objective, budget: int, seed: int = 0) -> None:
        self.space, self.objective = space, objective
        self._rng = random.Random(seed)
        self._seen: set[Any] = set()

    def ask(self, n: int) -> list[Candidate]:
        """Up to ``n`` unseen uniform samples (fewer once the space runs dry)."""
        batch: list[Candidate] = []
        for _ in range(50 * n):
            if len(batch) >= n:
                break
            candidate = self.space.sample(self._rng)
            key = candidate_key(candidate)
            if key not in self._seen:
                self._seen.add(key)
                batch.append(candidate)
        return batch

    def tell(self, evaluations: Sequence[Evaluation]) -> None:
        """Random search learns nothing."""


STRATEGIES: dict[str, Callable[..., Strategy]] = {"guided": GuidedStrategy, "random": RandomStrategy}
