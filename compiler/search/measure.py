"""Host latency of candidate models: interleaved rounds, repeated until every median is stable.

The build host is shared and noisy, so a lone timing means little. Candidates are timed
round-robin in the same process (one round = a few runs of each), which spreads machine noise over
all of them alike, and rounds continue until each model's running median moved less than
``rel_tol`` over the last ``settle_rounds`` rounds (or ``max_rounds`` is reached, which the result
says). Latency is never measured inside the parallel executor: concurrent candidates would
compete for the same cores and skew each other.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from edgec.core.ir import Feeds
from edgec.runtime.timing import interleaved_rounds
from edgec.targets.profile import TargetProfile


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Latency of one model: median and p90 over all timed runs, and whether the median settled."""

    median_ms: float
    p90_ms: float
    runs: int
    rounds: int
    stable: bool


def _settled(history: list[float], settle_rounds: int, rel_tol: float) -> bool:
    if len(history) <= settle_rounds:
        return False
    recent = history[-settle_rounds - 1:]
    return (max(recent) - min(recent)) <= rel_tol * recent[-1]


def measure_latencies(models: Sequence[bytes | str], feeds: Feeds, *, threads: int = 1, level: str = "all",
                      runs_per_round: int = 3, min_rounds: int = 5, max_rounds: int = 40,
                      settle_rounds: int = 3, rel_tol: float = 0.02, warmup: int = 3) -> list[Measurement]:
    """Median latency (ms) of each model, timed in interleaved rounds until the medians settle."""
    timed = interleaved_rounds(models, feeds, runs=runs_per_round, warmup=warmup, threads=threads, level=level)
    samples: list[list[float]] = [[] for _ in models]
    histories: list[list[float]] = [[] for _ in models]
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        samples = next(timed)
        for bucket, history in zip(samples, histories, strict=True):
            history.append(float(np.median(bucket)))
        if rounds >= min_rounds and all(_settled(h, settle_rounds, rel_tol) for h in histories):
            break
    return [Measurement(median_ms=float(np.median(b)), p90_ms=float(np.percentile(b, 90)), runs=len(b),
                        rounds=rounds, stable=_settled(h, settle_rounds, rel_tol))
            for b, h in zip(samples, histories, strict=True)]


class LatencySource(Protocol):
    """Where a search's candidate latencies come from: each model's latency over the original's."""

    label: str  # how latency was obtained, for reports
    measured: bool  # timed on this host, so noisy: a choice under a latency target is timed again
    # New models are priced by a latency model, not timed: asking costs nothing, so the per-layer
    # phase asks it for its offspring instead of using its own cost model.
    prices: bool

    @property
    def baseline_ms(self) -> float:
        """The original's latency (ms)."""
        ...

    def ratios(self, models: Sequence[bytes], min_rounds: int = 5) -> list[float]:
        """Each model's latency over the original's (``min_rounds``: of timing, where there is any)."""
        ...


class HostLatency:
    """Measured latency on this host, normalised by the original model timed in the same round."""

    measured = True
    prices = False

    def __init__(self, original: bytes, feeds: Feeds, target: TargetProfile) -> None:
        self.original, self.feeds = original, feeds
        self.threads, self.level = target.intra_op_num_threads, target.graph_optimization_level
        # Alternating with a copy of itself: the conditions every later timing runs in (see ``ratios``).
        self.original_ms = [measure_latencies([original, original], feeds, min_rounds=8, threads=self.threads,
                                              level=self.level)[0].median_ms]
        self.label = f"measured on this host ({target.intra_op_num_threads} thread(s))"

    @property
    def baseline_ms(self) -> float:
        """The original's latency: the median of its medians over every round."""
        return statistics.median(self.original_ms)

    def ratios(self, models: Sequence[bytes], min_rounds: int = 5) -> list[float]:
        """Each model's latency over the original's, timed in a pair with it in interleaved rounds.

        Every timing runs two models alternating, as the final check of the chosen model does, so
        the original's time base is the same throughout (a model timed alone keeps more of its
        weights in cache: ResNet-50 alone ran ~10% faster than alternating with another).
        """
        return [model_ms / base_ms for base_ms, model_ms in self.timings(models, min_rounds)]

    def timings(self, models: Sequence[bytes], min_rounds: int = 5) -> list[tuple[float, float]]:
        """(the original's ms, the model's ms) of each model, timed in a pair as ``ratios`` times them."""
        out = []
        for model in models:
            base, timed = measure_latencies([self.original, model], self.feeds, min_rounds=min_rounds,
                                            threads=self.threads, level=self.level)
            self.original_ms.append(base.median_ms)
            out.append((base.median_ms, timed.median_ms))
        return out
