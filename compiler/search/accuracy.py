"""Accuracy of a candidate without a task metric: agreement of its outputs with the original's.

The score is ``edgec.core.agreement``'s: centered (Pearson, or KL for probability outputs) and per slice
where an output concatenates values of different ranges, so a constant output or a detector's wrong class
scores cannot hide behind a high cosine. A module-level function on plain data, so the executor can ship
it to worker processes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgec.core.agreement import agreement_score
from edgec.core.ir import Feeds
from edgec.runtime.session import make_session, run


@dataclasses.dataclass(frozen=True)
class ProxyTask:
    """One candidate to score: its model bytes, the scoring feeds and the original's outputs on them."""

    model: bytes
    feeds: tuple[Feeds, ...]
    reference: tuple[dict[str, np.ndarray], ...]


def output_agreement(task: ProxyTask) -> float:
    """The lowest per-output agreement of the candidate's outputs with the original's (1.0 = same)."""
    session = make_session(task.model, level="all", threads=1)
    outputs = [run(session, feeds) for feeds in task.feeds]
    return agreement_score(list(task.reference), outputs)
