"""The Pareto front of a search (latency down, accuracy up): as rows for reports and as a PNG plot.

A candidate is on the front when no other is at least as fast and at least as accurate and better in
one of the two. The front is what a user trades along: every other candidate is beaten by a point
on it. Failed candidates (no latency or accuracy) are never on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.search.objective import Evaluation
from edgec.compiler.search.space import PRECISION
from edgec.passes.base import available_passes


def pareto_front(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """Non-dominated evaluations, fastest first."""
    done = sorted((e for e in evaluations if e.ok), key=lambda e: (e.ms, -e.score))
    front: list[Evaluation] = []
    for e in done:
        if not front or e.score > front[-1].score:
            front.append(e)
    return front


def describe(candidate: dict[str, Any]) -> str:
    """A short label: precision, then every labelled knob away from its idle value, continuous ones first."""
    passes = available_passes()
    named: list[tuple[bool, str]] = []
    for key, value in candidate.items():
        name, _, option = key.partition(".")
        knob = passes[name].search_space.get(option) if name in passes else None
        if knob is not None and knob.label and value is not None and value != knob.idle_at:
            named.append((not knob.continuous, knob.label.format(value)))
    named.sort(key=lambda item: item[0])  # stable: candidate order within each kind
    return ", ".join([str(candidate.get(PRECISION, "fp32")), *(text for _, text in named)])


def front_rows(front: Sequence[Evaluation], chosen: Evaluation | None) -> list[dict[str, Any]]:
    """Plain rows for the manifest and the CLI table; the chosen one is always listed.

    (It can sit just off the front: under a latency target an equally accurate candidate that is
    faster but under the [0.90, 0.98] window ranks below one in the window.)
    """
    if chosen is not None and chosen.ok and all(e is not chosen for e in front):
        front = sorted([*front, chosen], key=lambda e: e.ms)
    return [{"latency_ms": e.latency_ms, "accuracy": e.accuracy, "drop": e.drop, "candidate": describe(e.candidate),
             "knobs": e.candidate, "digest": e.model_digest, "chosen": e is chosen} for e in front]


def plot_front(path: Path, evaluations: Sequence[Evaluation], chosen: Evaluation | None, *,
               target_ms: float | None, metric: str, title: str) -> Path:
    """Every candidate in grey, the front as a line, the chosen one and the target marked; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [e for e in evaluations if e.ok]
    front = pareto_front(done)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        ax.scatter(_floats(e.latency_ms for e in done), _floats(e.accuracy for e in done), s=14, c="0.65",
                   label="candidates")
        ax.plot(_floats(e.latency_ms for e in front), _floats(e.accuracy for e in front), "o-", c="tab:blue", ms=4,
                label="Pareto front")
        if chosen is not None and chosen.ok:
            ax.scatter(_floats([chosen.latency_ms]), _floats([chosen.accuracy]), s=90, marker="*", c="tab:red",
                       zorder=3, label="chosen")
        if target_ms is not None:
            ax.axvline(target_ms, ls="--", c="tab:red", lw=1, label=f"target {target_ms:.3g} ms")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel(metric)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _floats(values: Iterable[float | None]) -> np.ndarray:
    """A float array for matplotlib; a missing value is NaN (what matplotlib makes of None)."""
    return np.asarray(list(values), dtype=float)
