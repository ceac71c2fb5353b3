"""The Pareto front of a search (latency down, accuracy up): as rows for reports and as a PNG plot.

A candidate is on the front when no other is at least as fast and at least as accurate and better in
one of the two. The front is what a user trades along: every other candidate is beaten by a point
on it. Failed candidates (no latency or accuracy) are never on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgec.compiler.search.objective import Evaluation


def pareto_front(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """Non-dominated evaluations, fastest first."""
    done = sorted((e for e in evaluations if e.ok), key=lambda e: (e.ms, -e.score))
    front: list[Evaluation] = []
    for e in done:
        if not front or e.score > front[-1].score:
            front.append(e)
    return front


def describe(candidate: dict[str, Any]) -> str:
    """A short label: precision, ratio, blocks, and the categoricals that differ from nothing."""
    parts = [str(candidate.get("precision", "fp32"))]
    if candidate.get("prune-channels.ratio"):
        parts.append(f"ratio {candidate['prune-channels.ratio']:.3g}")
    if candidate.get("prune-depth.num_blocks"):
        parts.append(f"-{candidate['prune-depth.num_blocks']} blocks")
    return ", ".join(parts)



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
        ax.scatter([e.latency_ms for e in done], [e.accuracy for e in done], s=14, c="0.65", label="candidates")
        ax.plot([e.latency_ms for e in front], [e.accuracy for e in front], "o-", c="tab:blue", ms=4,
                label="Pareto front")
        if chosen is not None and chosen.ok:
            ax.scatter([chosen.latency_ms], [chosen.accuracy], s=90, marker="*", c="tab:red", zorder=3,
                       label="chosen")
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
