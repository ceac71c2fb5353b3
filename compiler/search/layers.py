"""Per-layer levels: an evolutionary search (EvoPress-style) around the uniform choice, priced per layer.

After the uniform knobs are searched, a pass's ``per_layer`` knob (prune-channels' one ratio per channel
group) is explored from the best uniform candidate under the latency target. EvoPress (Sieberling et al.,
2024) searches per-layer compression levels with *level-switch* mutations (one layer one level up,
another one down, so the total stays put) and keeps the fittest of each generation. Here the total
that must stay put is latency, so an offspring is priced by a per-layer cost model and kept only when
it costs no more than its parent; spare latency is handed back to layers one level at a time. Offspring
are built on the fit part of the calibration data and selected on the held-out score, as every
candidate of the search is. One parent, elitist: a generation's best replaces it only when more accurate.

The cost model: each node's arithmetic and written bytes scale with the kept share of the layers it
reads and writes (``LayerLevels``), and latency ~ a + b * FLOPs + c * bytes, fitted (non-negative, relative
error) to the latencies the search already has for uniform candidates of the same combination: measured
on this host, or predicted from a device file. Offspring latencies are that model's figure scaled to the
parent's measured one; the choice is timed again before it is accepted (``orchestrate._confirmed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgec.compiler.search.evaluate import CandidateOutcome
from edgec.compiler.search.latency_model import _nnls, model_features
from edgec.compiler.search.objective import Evaluation, Objective
from edgec.compiler.search.space import Candidate, SearchKnob, SearchSpace
from edgec.core.ir import Feeds
from edgec.passes.base import LayerLevels, available_passes
from edgec.targets.profile import TargetProfile

MAX_SWITCHES = 3  # level switches per offspring: EvoPress draws 1 to a few
FILL_TRIES = 8  # attempts to hand spare latency back to a layer
PROPOSE_TRIES = 200  # mutations tried per offspring before the generation goes short
CREDIT_UP, CREDIT_DOWN = 1.5, 0.8  # how a move's draw weight follows the offspring it made


def static_at(proto: onnx.ModelProto, feeds: Feeds) -> onnx.ModelProto:
    """A copy of ``proto`` with every graph input's dims set to the feed's, so shapes (and FLOPs) are known."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for value in out.graph.input:
        if value.name in feeds and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, np.asarray(feeds[value.name]).shape, strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    return out


class LayerCost:
    """Latency of a choice of levels: a + b * FLOPs + c * bytes over the model's nodes, each scaled per layer."""

    def __init__(self, levels: LayerLevels, proto: onnx.ModelProto) -> None:
        self.levels = levels
        features = model_features(proto)
        self.nodes = [(f.name, f.flops, f.bytes) for f in features if f.name in levels.scaling or
                      f.name in levels.traffic]
        scaled = {name for name, _, _ in self.nodes}
        self.fixed = (sum(f.flops for f in features if f.name not in scaled),
                      sum(f.bytes for f in features if f.name not in scaled))
        self.coef = np.array([0.0, 1.0, 0.0])

    def features(self, choice: Sequence[int]) -> np.ndarray:
        """[1, FLOPs, bytes] of the model with layer i at level index ``choice[i]``."""
        kept = self._kept(choice)
        flops = self.fixed[0] + sum(f * self.levels.work(n, kept) for n, f, _ in self.nodes)
        moved = self.fixed[1] + sum(b * self.levels.moved(n, kept) for n, _, b in self.nodes)
        return np.array([1.0, flops, moved])

    def _kept(self, choice: Sequence[int]) -> Callable[[int], float]:
        return lambda layer: self.levels.kept[layer][choice[layer]]

    def fit(self, points: Sequence[tuple[Sequence[int], float]]) -> None:
        """Fit the coefficients to (choice, latency ms) points: non-negative, minimising relative error.

        One point (or a degenerate set) leaves latency proportional to FLOPs through the fastest point.
        """
        x = np.array([self.features(c) for c, _ in points])
        y = np.array([ms for _, ms in points])
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        coef = np.zeros(3)
        if len(points) >= 3:
            coef = _nnls((x / scale) / y[:, None], np.ones_like(y)) / scale
        elif len(points) == 2:
            sub = _nnls((x[:, :2] / scale[:2]) / y[:, None], np.ones_like(y)) / scale[:2]
            coef[:2] = sub
        if not coef[1:].any():
            fastest = int(np.argmin(y))
            coef = np.array([0.0, y[fastest] / max(x[fastest, 1], 1e-12), 0.0])
        self.coef = coef

    def predict(self, choice: Sequence[int]) -> float:
        """Latency (ms) of the choice by the fitted model."""
        return float(self.coef @ self.features(choice))


@dataclasses.dataclass(frozen=True)
class LayerPhase:
    """What a per-layer phase works with: the knob, its layers, the uniform knob it refines, the base."""

    knob: SearchKnob
    uniform: SearchKnob
    levels: LayerLevels
    base: Evaluation

    def level_of(self, candidate: Candidate) -> int:
        """The index of a candidate's uniform value among the levels."""
        return self.levels.levels.index(round(float(candidate[self.uniform.key]), 3))

    def choice_of(self, candidate: Candidate) -> list[int]:
        """Level index per layer of a uniform candidate (or one of this phase's)."""
        choice = [self.level_of(candidate)] * len(self.levels.layers)
        overrides = dict(candidate.get(self.knob.key) or ())
        for i, name in enumerate(self.levels.layers):
            if name in overrides:
                choice[i] = self.levels.levels.index(overrides[name])
        return choice

    def candidate(self, choice: Sequence[int]) -> Candidate:
        """The base candidate with every layer away from the uniform level overridden."""
        uniform = self.level_of(self.base.candidate)
        pairs = tuple((name, self.levels.levels[k]) for name, k in zip(self.levels.layers, choice, strict=True)
                      if k != uniform)
        return {**self.base.candidate, self.knob.key: pairs}


def prepare(space: SearchSpace, evaluations: Sequence[Evaluation], objective: Objective, original: bytes,
            target: TargetProfile, feeds: Feeds) -> LayerPhase | None:
    """The phase for the best uniform candidate under the latency target, or None when there is nothing to refine.

    Needs a latency target, a per-layer knob whose pass the best candidate runs, and a uniform
    (ordered, continuous) knob of the same pass that the candidate sets away from its idle value.
    """
    best = objective.best(evaluations)
    if objective.latency_ms is None or best is None:
        return None
    active = space.active_passes(best.candidate)
    for knob in space.layer_knobs:
        uniform = next((k for k in space.knobs if k.pass_name == knob.pass_name and k.ordered and k.continuous),
                       None)
        if knob.pass_name not in active or uniform is None or not best.candidate.get(uniform.key):
            continue
        measured = {round(float(e.candidate[uniform.key]), 3) for e in evaluations
                    if e.ok and _same_combination(e.candidate, best.candidate, uniform)}
        values = tuple(sorted({float(c) for c in knob.choices} | measured))
        cls = available_passes()[knob.pass_name or ""]
        proto = onnx.load_from_string(original)
        options = space.pipeline(best.candidate)[1].get(knob.pass_name or "", {})
        levels = cls.layer_levels(proto, target, feeds, knob.option, values, options)
        if levels is not None:
            return LayerPhase(knob, uniform, levels, best)
    return None


def _same_combination(candidate: Candidate, base: Candidate, uniform: SearchKnob) -> bool:
    """Whether ``candidate`` differs from ``base`` in the uniform knob alone (and sets no per-layer knob)."""
    return all(candidate.get(k) == v for k, v in base.items() if k != uniform.key and not isinstance(v, tuple)) \
        and not any(isinstance(v, tuple) and v for v in candidate.values())


class LayerEvolution:
    """EvoPress-style (1 + lambda) evolution of per-layer levels at the base's latency.

    Several levels often build one width (a 32-channel layer at the target's multiple of 16 keeps 16
    from ratio 0.1 to 0.6), so a layer moves between its distinct widths, each stood for by the level
    nearest the uniform one (the uniform level itself where it builds that width: no override).
    """

    def __init__(self, phase: LayerPhase, cost: LayerCost, rng: random.Random) -> None:
        self.phase, self.cost, self.rng = phase, cost, rng
        levels = phase.levels
        uniform = phase.level_of(phase.base.candidate)
        self.widths: list[list[int]] = []  # per layer: one level per distinct width, widest first
        for row in levels.kept:
            by_width: dict[float, int] = {}
            for k in sorted(range(len(row)), key=lambda k: (abs(k - uniform), k)):
                by_width.setdefault(row[k], k)
            self.widths.append([by_width[w] for w in sorted(by_width, reverse=True)])
        self.parent = phase.choice_of(phase.base.candidate)
        self.parent_score = phase.base.score
        self.budget_ms = cost.predict(self.parent)
        self.seen = {self._widths_of(self.parent)}
        self.narrow_credit = [1.0] * len(self.parent)
        self.widen_credit = [1.0] * len(self.parent)

    def _widths_of(self, choice: Sequence[int]) -> tuple[float, ...]:
        return tuple(self.phase.levels.kept[i][k] for i, k in enumerate(choice))

    def _step(self, layer: int, level: int, direction: int) -> int | None:
        """The level one distinct width away from ``level`` (+1: narrower), or None past the last."""
        width = self.phase.levels.kept[layer][level]
        options = self.widths[layer]
        at = next(i for i, k in enumerate(options) if self.phase.levels.kept[layer][k] == width)
        return options[at + direction] if 0 <= at + direction < len(options) else None

    def _movable(self, child: Sequence[int], direction: int) -> list[int]:
        return [i for i in range(len(child)) if self._step(i, child[i], direction) is not None]

    def _pick(self, layers: Sequence[int], direction: int) -> int:
        """A layer to move ``direction``, drawn by the credit that move has earned so far."""
        credit = self.narrow_credit if direction > 0 else self.widen_credit
        return self.rng.choices(list(layers), weights=[credit[i] for i in layers])[0]

    def _move(self, child: list[int], layer: int, direction: int) -> None:
        step = self._step(layer, child[layer], direction)
        if step is not None:
            child[layer] = step

    def _mutate(self) -> list[int] | None:
        child = list(self.parent)
        for _ in range(self.rng.randint(1, MAX_SWITCHES)):  # level switches: one narrower, one wider
            narrow, widen = self._movable(child, +1), self._movable(child, -1)
            if not narrow or not widen:
                return None
            i = self._pick(narrow, +1)
            self._move(child, i, +1)
            self._move(child, self._pick([j for j in widen if j != i] or widen, -1), -1)
        while self.cost.predict(child) > self.budget_ms:  # over the latency: narrow one more layer a step
            narrow = self._movable(child, +1)
            if not narrow:
                return None
            self._move(child, self._pick(narrow, +1), +1)
        for _ in range(FILL_TRIES):  # under it: give a layer a step back while it still fits
            widen = self._movable(child, -1)
            if not widen:
                break
            trial = list(child)
            self._move(trial, self._pick(widen, -1), -1)
            if self.cost.predict(trial) <= self.budget_ms:
                child = trial
        return child

    def propose(self, n: int) -> list[list[int]]:
        """Up to ``n`` new offspring of the parent that cost no more than the base."""
        out: list[list[int]] = []
        for _ in range(PROPOSE_TRIES):
            if len(out) == n:
                break
            child = self._mutate()
            if child is not None and self._widths_of(child) not in self.seen:
                self.seen.add(self._widths_of(child))
                out.append(child)
        return out

    def select(self, offspring: Sequence[tuple[list[int], float | None]]) -> None:
        """Keep the most accurate offspring as the parent when it beats the parent.

        Each offspring also credits the moves that made it: a layer narrowed (widened) in an offspring that
        scored above the parent is drawn more often for that move, below it less (a cross-entropy-like
        bias, so a few generations already favour the layers that tolerate pruning).
        """
        scored = [(score, child) for child, score in offspring if score is not None and math.isfinite(score)]
        for score, child in scored:
            factor = CREDIT_UP if score > self.parent_score else CREDIT_DOWN if score < self.parent_score else 1.0
            for i, (old, new) in enumerate(zip(self._widths_of(self.parent), self._widths_of(child), strict=True)):
                if new < old:
                    self.narrow_credit[i] *= factor
                elif new > old:
                    self.widen_credit[i] *= factor
        if scored:
            score, child = max(scored, key=lambda item: item[0])
            if score > self.parent_score:
                self.parent, self.parent_score = child, score


def fit_cost(phase: LayerPhase, evaluations: Sequence[Evaluation], original: bytes, feeds: Feeds) -> LayerCost:
    """The cost model of ``phase``, fitted to the search's uniform candidates of the base's combination."""
    cost = LayerCost(phase.levels, static_at(onnx.load_from_string(original), feeds))
    points: dict[tuple[int, ...], list[float]] = {}
    for e in evaluations:
        if e.ok and _same_combination(e.candidate, phase.base.candidate, phase.uniform):
            points.setdefault(tuple(phase.choice_of(e.candidate)), []).append(e.ms)
    cost.fit([(list(c), float(np.median(ms))) for c, ms in points.items()])
    return cost


def offspring_evaluations(phase: LayerPhase, cost: LayerCost, choices: Sequence[list[int]],
                          outcomes: Sequence[CandidateOutcome], baseline_accuracy: float) -> list[Evaluation]:
    """Evaluations of built offspring, their latency the cost model's scaled to the base's measured one."""
    scale = phase.base.ms / max(cost.predict(phase.choice_of(phase.base.candidate)), 1e-12)
    out = []
    for outcome in outcomes:
        choice = choices[outcome.index]
        candidate = phase.candidate(choice)
        digest = hashlib.sha256(outcome.model).hexdigest() if outcome.model is not None else ""
        latency = cost.predict(choice) * scale if outcome.model is not None else None
        drop = None if outcome.accuracy is None else baseline_accuracy - outcome.accuracy
        out.append(Evaluation(candidate, latency, outcome.accuracy, drop, outcome.build_s, outcome.error, digest))
    return out


def layer_summary(phase: LayerPhase, candidate: Candidate) -> list[dict[str, Any]]:
    """Per layer of a candidate: name, width, ratio and channels kept (for reports and the bar chart)."""
    choice = phase.choice_of(candidate)
    return [{"layer": name, "width": width, "ratio": phase.levels.levels[k],
             "kept": round(phase.levels.kept[i][k] * width)}
            for i, (name, width, k) in enumerate(zip(phase.levels.layers, phase.levels.widths, choice, strict=True))]


def plot_layers(path: Path, rows: Sequence[dict[str, Any]], title: str) -> Path:
    """Channels kept per layer of the chosen model against each layer's width: a bar chart PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.4, 0.22 * len(rows) + 2), 4.2), dpi=120)
    try:
        x = np.arange(len(rows))
        ax.bar(x, [r["width"] for r in rows], color="0.85", label="channels before")
        ax.bar(x, [r["kept"] for r in rows], color="tab:blue", label="kept")
        ax.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("channels")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
