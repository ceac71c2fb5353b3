"""What a search optimises: an evaluated candidate, and the objective that ranks evaluations.

Under ``--latency-ms T`` the best candidate is the most accurate one that runs within T, less a
headroom for timing noise (``HEADROOM``); between equally accurate ones (within ``TIE``), one within
[0.90 T, 0.98 T] (the target was asked for, so the search uses it), then the more accurate, then the
faster. Under ``--max-drop D`` alone it is the
fastest one whose accuracy drop is at most D, then the more accurate. Given both, both constrain
and accuracy ranks. Failed candidates are never feasible.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

WINDOW = 0.90  # a landed latency is within [WINDOW * T, HEADROOM * T]
# A candidate fits a target T when it was measured within 0.98 T: the user times the bundle again,
# and on this shared 2-core host a second median of the same model moves (bench/search.py re-measures
# every choice: 0-1% on ResNet-50, 2.4% once on BERT-like); one measured at 0.995 T would be over T
# about half the time.
HEADROOM = 0.98
# Accuracy differences below this are noise, not preference: a tenth of one held-out example in a
# thousand, or the fifth digit of an output cosine (pruned random-init nets differ in the tenth).
TIE = 1e-4


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluated candidate: latency (ms) and accuracy (higher is better), or why it failed."""

    candidate: dict[str, Any]
    latency_ms: float | None
    accuracy: float | None
    drop: float | None
    build_s: float = 0.0
    error: str = ""
    model_digest: str = ""  # sha256 of the built model: equal digests, equal models

    @property
    def ok(self) -> bool:
        """Built, scored and timed."""
        return self.latency_ms is not None and self.accuracy is not None

    @property
    def ms(self) -> float:
        """Latency; infinite for a failed candidate, so no comparison favours it."""
        return self.latency_ms if self.latency_ms is not None else math.inf

    @property
    def score(self) -> float:
        """Accuracy; minus infinity for a failed candidate."""
        return self.accuracy if self.accuracy is not None else -math.inf

    @property
    def lost(self) -> float:
        """Accuracy drop; infinite for a failed candidate."""
        return self.drop if self.drop is not None else math.inf


@dataclasses.dataclass(frozen=True)
class Objective:
    """Most accurate within ``latency_ms``, or fastest within ``max_drop``, or both constraints."""

    latency_ms: float | None = None
    max_drop: float | None = None

    def fits_latency(self, e: Evaluation) -> bool:
        """Meets the latency target with its headroom (or there is no target)."""
        return e.ok and (self.latency_ms is None or e.ms <= HEADROOM * self.latency_ms)

    def fits_drop(self, e: Evaluation) -> bool:
        """Within the accuracy drop (or there is none)."""
        return e.ok and (self.max_drop is None or e.lost <= self.max_drop + 1e-12)

    def feasible(self, e: Evaluation) -> bool:
        """Meets every constraint."""
        return self.fits_latency(e) and self.fits_drop(e)

    def in_window(self, e: Evaluation) -> bool:
        """Latency within [0.90, 0.98] of the target."""
        return self.latency_ms is not None and e.ok and WINDOW * self.latency_ms <= e.ms <= HEADROOM * self.latency_ms

    def rank(self, e: Evaluation) -> tuple[float, ...]:
        """Sort key, larger is better: accuracy first under a latency target, speed first otherwise."""
        if self.latency_ms is not None:
            return (e.score, float(self.in_window(e)), -e.ms)
        return (-e.ms, e.score)

    def best(self, evaluations: Sequence[Evaluation]) -> Evaluation | None:
        """The best feasible evaluation, or None. Under a latency target, accuracies within ``TIE`` are equal."""
        feasible = [e for e in evaluations if self.feasible(e)]
        if not feasible:
            return None
        if self.latency_ms is not None:
            top = max(e.score for e in feasible)
            feasible = [e for e in feasible if e.score >= top - TIE]
            return max(feasible, key=lambda e: (float(self.in_window(e)), e.score, -e.ms))
        return max(feasible, key=self.rank)
