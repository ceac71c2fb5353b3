"""How well a candidate's outputs agree with the original's: a centered score per output, 1 = the same.

An uncentered cosine flatters: a constant output scores 0.96 against logits shifted by +10, and one cosine
over a detector's output, which concatenates box coordinates (0..320) with class scores (0..1), stays above
0.99 when every class score is wrong. So each output is scored with a measure chosen by its range:

* ``kl``: rows that are probability distributions (values in [0, 1] summing to 1 along the last axis):
  exp(-mean KL(original || candidate)), so a uniform guess at a peaked distribution scores low;
* ``pearson``: anything else: Pearson correlation (centered, scale-free), computed per slice along the axis
  whose slices' value ranges differ most when they differ by more than ``RANGE_SPREAD`` (the box and class
  channels of a detector) and each slice holds at least ``MIN_SLICE_VALUES`` values, and averaged over
  the slices so that each slice counts the same; over the whole tensor otherwise.

A constant candidate has no correlation with a varying original and scores 0. A slice constant in the
original scores 1 when the candidate keeps it (within ``FLAT_RTOL`` of the output's spread), else 0.
Non-numeric outputs score 1 when equal, else 0; a changed shape or a non-finite value scores 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Slices whose value ranges differ by more than this factor are scored one by one (a detector's boxes
# against its class scores: about 300x); the issue that asked for it named ~16x.
RANGE_SPREAD = 16.0
# Fewer values than this per slice (a classifier's logits over a few samples) make a per-slice correlation
# noise: such an axis is never sliced.
MIN_SLICE_VALUES = 16
# A slice counts as constant when its spread is below this share of the whole output's.
FLAT_RTOL = 1e-6
# Rows summing to 1 within this are read as probability distributions.
SUM_ATOL = 1e-3
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Agreement:
    """One output's agreement: the measure used, the score (1 = same) and the worst slice, if sliced."""

    output: str
    measure: str  # "pearson" | "kl" | "exact" | "shape"
    score: float
    slice_axis: int | None = None
    worst_slice: int | None = None
    worst_score: float | None = None


def output_agreement(reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]
                     ) -> list[Agreement]:
    """Per-output agreement over a list of runs (outputs matched by name, in the reference's order)."""
    return [_agreement(name, [r[name] for r in reference], [c.get(name) for c in candidate])
            for name in reference[0]]


def agreement_score(reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]) -> float:
    """The lowest per-output agreement: the proxy accuracy of a candidate without a task metric."""
    return min((a.score for a in output_agreement(reference, candidate)), default=1.0)


def _agreement(name: str, reference: list[Any], candidate: list[Any]) -> Agreement:
    if any(r is None for r in reference) or any(c is None for c in candidate):
        same = [r is None for r in reference] == [c is None for c in candidate]
        return Agreement(name, "shape", 1.0 if same else 0.0)
    ref_parts = [np.asarray(r) for r in reference]
    got_parts = [np.asarray(c) for c in candidate]
    if [p.shape for p in ref_parts] != [p.shape for p in got_parts]:
        return Agreement(name, "shape", 0.0)
    if any(p.dtype.kind not in "biuf" for p in [*ref_parts, *got_parts]):
        same = all(np.array_equal(a, b) for a, b in zip(ref_parts, got_parts, strict=True))
        return Agreement(name, "exact", 1.0 if same else 0.0)
    if len({p.shape for p in ref_parts}) > 1:  # runs of different shapes: score each run's flat values
        ref = np.concatenate([p.reshape(1, -1) for p in ref_parts], axis=1).astype(np.float64)
        got = np.concatenate([p.reshape(1, -1) for p in got_parts], axis=1).astype(np.float64)
    else:  # one stacked array: axis 0 is the run
        ref, got = np.stack(ref_parts).astype(np.float64), np.stack(got_parts).astype(np.float64)
    # NaN where the original has NaN (sqrt of a negative input) and equal infinities agree; any other
    # non-finite value is a disagreement. The agreeing ones are set to 0 in both, so they score as kept.
    agree = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    if not (np.isfinite(ref) | agree).all() or not (np.isfinite(got) | agree).all():
        return Agreement(name, "pearson", 0.0)
    ref, got = np.where(agree, 0.0, ref), np.where(agree, 0.0, got)
    if _is_distribution(ref):
        return Agreement(name, "kl", _kl_score(ref, got))
    axis = _slice_axis(ref)
    if axis is None:
        return Agreement(name, "pearson", _pearson(ref.ravel(), got.ravel(), _spread(ref)))
    spread = _spread(ref)
    scores = [_pearson(np.take(ref, i, axis=axis).ravel(), np.take(got, i, axis=axis).ravel(), spread)
              for i in range(ref.shape[axis])]
    worst = int(np.argmin(scores))
    # axis - 1: the run axis added above is not one of the output's own axes
    return Agreement(name, "pearson", float(np.mean(scores)), axis - 1, worst, float(scores[worst]))


def _spread(values: np.ndarray) -> float:
    return float(values.max() - values.min()) if values.size else 0.0


def _pearson(ref: np.ndarray, got: np.ndarray, output_spread: float) -> float:
    """Pearson correlation, clipped at 0; a constant reference slice: 1 if kept, else 0."""
    ref_c, got_c = ref - ref.mean(), got - got.mean()
    ref_norm, got_norm = float(np.linalg.norm(ref_c)), float(np.linalg.norm(got_c))
    tolerance = FLAT_RTOL * max(output_spread, _EPS)
    if _spread(ref) <= tolerance:
        return 1.0 if float(np.abs(got - ref).max(initial=0.0)) <= max(tolerance, 1e-3 * output_spread) else 0.0
    if got_norm <= _EPS:
        return 0.0
    return max(0.0, float(ref_c @ got_c / (ref_norm * got_norm)))


def _is_distribution(ref: np.ndarray) -> bool:
    if ref.ndim < 2 or ref.shape[-1] < 2 or ref.min() < 0.0 or ref.max() > 1.0:
        return False
    return bool(np.all(np.abs(ref.sum(axis=-1) - 1.0) <= SUM_ATOL))


def _kl_score(ref: np.ndarray, got: np.ndarray) -> float:
    """exp(-mean KL(ref || got)) over the rows; a candidate row that is not a distribution is renormalised."""
    got = np.clip(got, _EPS, None)
    got = got / got.sum(axis=-1, keepdims=True)
    kl = np.sum(np.where(ref > 0, ref * (np.log(np.clip(ref, _EPS, None)) - np.log(got)), 0.0), axis=-1)
    return float(np.exp(-np.mean(kl)))


def _slice_axis(ref: np.ndarray) -> int | None:
    """The output axis (not the run axis 0) whose slices' ranges differ most, if by more than RANGE_SPREAD."""
    best, best_ratio = None, RANGE_SPREAD
    for axis in range(1, ref.ndim):
        if ref.shape[axis] < 2 or ref.size // ref.shape[axis] < MIN_SLICE_VALUES:
            continue
        moved = np.moveaxis(ref, axis, 0).reshape(ref.shape[axis], -1)
        ranges = moved.max(axis=1) - moved.min(axis=1)
        varying = ranges[ranges > FLAT_RTOL * max(_spread(ref), _EPS)]
        if varying.size < 2:
            continue
        ratio = float(varying.max() / varying.min())
        if ratio > best_ratio:
            best, best_ratio = axis, ratio
    return best
