"""Per-node quantization sensitivity, guided recovery to an accuracy budget, and the ranking plot."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx

from edgec.core import progress
from edgec.core.agreement import agreement_score
from edgec.core.ir import Feeds
from edgec.passes.context import BuildContext
from edgec.runtime.session import compare_outputs, make_session, run

logger = logging.getLogger(__name__)

# The op types whose weights carry most of a model: the nodes worth ranking one at a time.
WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose", "Attention"})
# Every 4th calibration sample ranks nodes and never sets a quantization range (as the search's own split).
HELD_OUT_EVERY = 4


@dataclasses.dataclass(frozen=True)
class HeldOutSplit:
    """Calibration samples split into those that set ranges (``fit``) and those that rank (``held_out``).

    ``in_sample``: one sample only, so it does both and the ranking scores its own ranges.
    """

    fit: list[Feeds]
    held_out: list[Feeds]
    held_out_indices: tuple[int, ...]
    in_sample: bool = False


def held_out_split(feeds: Sequence[Feeds], fit_at_most: int | None = None) -> HeldOutSplit:
    """Hold out the samples past the first ``fit_at_most`` when there are any, else every 4th (the last of 2-3).

    The first rule leaves the ranges what they would be without a ranking (a quantizer reads its first
    ``samples`` only). One sample is both parts, flagged ``in_sample``.
    """
    feeds = list(feeds)
    if fit_at_most is not None and 0 < fit_at_most < len(feeds):
        return HeldOutSplit(feeds[:fit_at_most], feeds[fit_at_most:], tuple(range(fit_at_most, len(feeds))))
    if len(feeds) < 2:
        return HeldOutSplit(feeds, feeds, tuple(range(len(feeds))), in_sample=True)
    held = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(feeds))]
    if len(feeds) < HELD_OUT_EVERY:
        held = [i == len(feeds) - 1 for i in range(len(feeds))]
    return HeldOutSplit([f for f, h in zip(feeds, held, strict=True) if not h],
                        [f for f, h in zip(feeds, held, strict=True) if h],
                        tuple(i for i, h in enumerate(held) if h))


def outputs_on(proto: onnx.ModelProto, feeds: Sequence[Feeds]) -> list[dict]:
    """Outputs as written (no ORT rewrites), so errors belong to the model, not to fusions."""
    session = make_session(proto.SerializeToString(), level="disabled", threads=1)
    return [run(session, f) for f in feeds]


def output_error(reference: list[dict], proto: onnx.ModelProto, feeds: Sequence[Feeds]) -> float:
    """1 - the lowest per-output cosine to ``reference``: 0 when identical."""
    errors = compare_outputs(reference, outputs_on(proto, feeds))
    return 1.0 - min(e.cosine for e in errors)


def agreement_error(reference: list[dict], proto: onnx.ModelProto, feeds: Sequence[Feeds]) -> float:
    """1 - the lowest per-output agreement with ``reference`` (``edgec.core.agreement``): 0 when identical.

    Centered, and per slice where an output's slices differ in range, so a node that wrecks a detector's
    class scores ranks above one that moves its boxes a little (a cosine over the whole output would not).
    """
    return 1.0 - agreement_score(reference, outputs_on(proto, feeds))


def metric_drop(ctx: BuildContext, fp32: onnx.ModelProto, feeds: Sequence[Feeds]
                ) -> tuple[str, Callable[[onnx.ModelProto], float]]:
    """The budget's unit and a function giving a candidate's drop: task metric if known, else 1 - cosine."""
    if ctx.evaluate is not None:
        base = ctx.evaluate(fp32.SerializeToString())
        if base:
            key = next(iter(base))
            return key, lambda proto: base[key] - (ctx.evaluate(proto.SerializeToString()) or {key: 0.0})[key]
    reference = outputs_on(fp32, feeds)
    return "1-cosine", lambda proto: output_error(reference, proto, feeds)


def rank(quantize_only: Callable[[str], onnx.ModelProto], candidates: Sequence[str],
         error: Callable[[onnx.ModelProto], float]) -> list[tuple[str, float]]:
    """Quantize one node at a time and measure the error; most sensitive first."""
    scores = [(name, error(quantize_only(name))) for name in progress.track(candidates, "sensitivity ranking")]
    return sorted(scores, key=lambda item: item[1], reverse=True)


@dataclasses.dataclass
class Recovery:
    """The configuration guided recovery kept, and every step it tried."""

    model: onnx.ModelProto
    kept_float: list[str]
    drop: float
    met: bool
    steps: list[dict]


def recover(build: Callable[[list[str]], onnx.ModelProto], ranked: Sequence[tuple[str, float]],
            drop_of: Callable[[onnx.ModelProto], float], max_drop: float, max_steps: int) -> Recovery:
    """Leave the most sensitive nodes in float, one more at a time, until the drop is within budget.

    Every extra float node costs speed, so the first (fewest-float) configuration that meets the
    budget is the fastest one; if none does, the one with the smallest drop is kept.
    """
    kept: list[str] = []
    model = build(kept)
    drop = drop_of(model)
    steps: list[dict[str, float | str]] = [{"kept_float": 0, "drop": drop}]
    best = Recovery(model, [], drop, drop <= max_drop, steps)
    for name, _ in ranked[:max_steps]:
        if best.met:
            break
        kept.append(name)
        model = build(list(kept))
        drop = drop_of(model)
        steps.append({"kept_float": len(kept), "node": name, "drop": drop})
        if drop <= max_drop or drop < best.drop:
            best = Recovery(model, list(kept), drop, drop <= max_drop, steps)
    best.steps = steps
    return best


def plot_ranking(ranked: Sequence[tuple[str, float]], path: Path, title: str, top: int = 30) -> Path:
    """A horizontal bar chart of the ``top`` most sensitive nodes (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(ranked[:top])[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1.2))
    ax.barh([name[-40:] for name, _ in shown], [max(score, 1e-9) for _, score in shown], color="#c0504d")
    ax.set_xscale("log")
    ax.set_xlabel("output error when only this node is quantized (vs fp32)")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



BITS = {"fp32": 32, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
COLOURS = {"fp32": "0.6", "fp16": "tab:green", "fp8": "tab:purple", "int8": "tab:blue", "int4": "tab:orange"}


def plot_precisions(precision_of: Mapping[str, str], path: Path, title: str) -> Path:
    """The precision each node was given, in graph order: a bar per node, its height the format's bits (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(precision_of)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.2 * len(names) + 2), 4.2))
    ax.bar(range(len(names)), [BITS.get(precision_of[n], 32) for n in names],
           color=[COLOURS.get(precision_of[n], "0.3") for n in names])
    ax.set_xticks(range(len(names)), [n[-30:] for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("bits")
    for fmt in dict.fromkeys(precision_of.values()):
        ax.bar([], [], color=COLOURS.get(fmt, "0.3"), label=fmt)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
