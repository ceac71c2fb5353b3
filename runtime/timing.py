"""Interleaved A/B latency: time several models round-robin so machine noise hits all alike."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from edgec.core.ir import Feeds
from edgec.runtime.session import make_session


def interleaved_samples(models: Sequence[bytes | str], feeds: Feeds, *, rounds: int = 10, runs: int = 5,
                        warmup: int = 3, threads: int = 1, level: str = "all") -> list[list[float]]:
    """Every call's latency in ms per model, timed in ``rounds`` round-robin rounds of ``runs`` calls."""
    sessions = [make_session(m, level=level, threads=threads) for m in models]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for session, bucket in zip(sessions, times, strict=True):
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feeds)
                bucket.append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_medians(models: Sequence[bytes | str], feeds: Feeds, *, rounds: int = 10, runs: int = 5,
                        warmup: int = 3, threads: int = 1, level: str = "all") -> list[float]:
    """Median latency in ms of each model, timed in ``rounds`` round-robin rounds of ``runs`` calls."""
    samples = interleaved_samples(models, feeds, rounds=rounds, runs=runs, warmup=warmup, threads=threads,
                                  level=level)
    return [float(np.median(t)) for t in samples]
