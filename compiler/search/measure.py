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
import time
from collections.abc import Sequence

import numpy as np

from edgec.core.ir import Feeds
from edgec.runtime.session import make_session


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
    sessions = [make_session(m, level=level, threads=threads) for m in models]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    samples: list[list[float]] = [[] for _ in sessions]
    histories: list[list[float]] = [[] for _ in sessions]
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        for session, bucket, history in zip(sessions, samples, histories, strict=True):
            for _ in range(runs_per_round):
                start = time.perf_counter()
                session.run(None, feeds)
                bucket.append((time.perf_counter() - start) * 1e3)
            history.append(float(np.median(bucket)))
        if rounds >= min_rounds and all(_settled(h, settle_rounds, rel_tol) for h in histories):
            break
    return [Measurement(median_ms=float(np.median(b)), p90_ms=float(np.percentile(b, 90)), runs=len(b),
                        rounds=rounds, stable=_settled(h, settle_rounds, rel_tol))
            for b, h in zip(samples, histories, strict=True)]
