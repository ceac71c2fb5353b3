"""Accuracy of a candidate without a task metric: agreement of its outputs with the original's.

A module-level function on plain data, so the executor can ship it to worker processes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgec.core.ir import Feeds
from edgec.runtime.session import compare_outputs, make_session, run


@dataclasses.dataclass(frozen=True)
class ProxyTask:
    """One candidate to score: its model bytes, calibration feeds and the original's outputs."""

    model: bytes
    feeds: tuple[Feeds, ...]
    reference: tuple[dict[str, np.ndarray], ...]


def output_cosine(task: ProxyTask) -> float:
    """Lowest per-output cosine between the candidate's and the original's outputs (1.0 = same)."""
    session = make_session(task.model, level="all", threads=1)
    outputs = [run(session, feeds) for feeds in task.feeds]
    return min(err.cosine for err in compare_outputs(list(task.reference), outputs))
