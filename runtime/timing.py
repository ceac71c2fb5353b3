"""Interleaved A/B latency: time several models round-robin so machine noise hits all alike."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from edgec.core.ir import Feeds
from edgec.runtime.session import make_session


def interleaved_rounds(models: Sequence[bytes | str], feeds: Feeds, *, runs: int = 5, warmup: int = 3,
                       threads: int = 1, level: str = "all") -> Iterator[list[list[float]]]:
    """Round-robin rounds of ``runs`` calls per model; each ``next`` times one more round.

    The sessions are made and warmed up here, before the first round. Every round yields the same
    lists, every call's latency in ms so far per model, so a caller can stop once they settle.
    """
    sessions = [make_session(m, level=level, threads=threads) for m in models]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    return _rounds(sessions, feeds, runs)


def _rounds(sessions: list[ort.InferenceSession], feeds: Feeds, runs: int) -> Iterator[list[list[float]]]:
    times: list[list[float]] = [[] for _ in sessions]
    while True:
        for session, bucket in zip(sessions, times, strict=True):
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feeds)
                bucket.append((time.perf_counter() - start) * 1e3)
        yield times


def interleaved_samples(models: Sequence[bytes | str], feeds: Feeds, *, rounds: int = 10, runs: int = 5,
                        warmup: int = 3, threads: int = 1, level: str = "all") -> list[list[float]]:
    """Every call's latency in ms per model, timed in ``rounds`` round-robin rounds of ``runs`` calls."""
    timed = interleaved_rounds(models, feeds, runs=runs, warmup=warmup, threads=threads, level=level)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        times = next(timed)
    return times


def interleaved_medians(models: Sequence[bytes | str], feeds: Feeds, *, rounds: int = 10, runs: int = 5,
                        warmup: int = 3, threads: int = 1, level: str = "all") -> list[float]:
    """Median latency in ms of each model, timed in ``rounds`` round-robin rounds of ``runs`` calls."""
    samples = interleaved_samples(models, feeds, rounds=rounds, runs=runs, warmup=warmup, threads=threads,
                                  level=level)
    return [float(np.median(t)) for t in samples]
