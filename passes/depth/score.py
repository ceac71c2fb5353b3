"""Block importance on calibration data: output error after removal, block influence, or a user metric."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from edgec.core.errors import ConfigError
from edgec.core.ir import Feeds, clone, to_proto
from edgec.passes.depth.blocks import Block
from edgec.passes.depth.edit import capture, output_names, remove_block
from edgec.passes.depth.replaceme import LinearMap, extend_over_norm, fit_linear
from edgec.runtime.session import make_session

Metric = Callable[[bytes, list[Feeds]], float]
SCORES = ("auto", "cosine", "mse", "influence", "span", "metric")
MASK_INPUT = "attention_mask"


def load_metric(spec: str, option: str) -> Metric:
    """Import ``package.module:function``: ``function(model_bytes, feeds) -> float``, higher is better."""
    module_name, sep, func = spec.partition(":")
    if not (sep and module_name and func):
        raise ConfigError(f"{option}: {spec!r} is not 'package.module:function'")
    try:
        found = getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{option}: cannot import {spec!r} ({exc})") from None
    if not callable(found):
        raise ConfigError(f"{option}: {spec!r} is not callable")
    return found


def run_outputs(model: ir.Model, feeds: Sequence[Feeds]) -> list[list[np.ndarray]]:
    """Graph outputs of ``model`` on each feed."""
    session = make_session(to_proto(model).SerializeToString(), level="basic", threads=1)
    return [session.run(None, feed) for feed in feeds]


def output_error(reference: list[list[np.ndarray]], got: list[list[np.ndarray]], kind: str) -> float:
    """1 - cosine (kind 'cosine') or mean squared error ('mse') over all outputs and feeds."""
    ref = np.concatenate([a.astype(np.float64).ravel() for outs in reference for a in outs])
    new = np.concatenate([a.astype(np.float64).ravel() for outs in got for a in outs])
    if kind == "mse":
        return float(np.mean((ref - new) ** 2))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(new))
    return float(1.0 - ref @ new / denom) if denom > 0 else float(not np.array_equal(ref, new))


def token_rows(acts: list[np.ndarray], axis: int, feeds: Sequence[Feeds]) -> np.ndarray:
    """[positions, channels] rows of ``acts`` that the model output reads.

    A feed's ``attention_mask`` (the Hugging Face input name) whose shape is the activation's without
    its channel axis marks padded positions: masked attention and masked pooling never read them, and
    they are most rows of short sentences, so an average over all rows would mostly measure padding.
    """
    rows = []
    for act, feed in zip(acts, feeds, strict=True):
        moved = np.moveaxis(act, axis, -1)
        mask = feed.get(MASK_INPUT)
        if mask is not None and mask.shape == moved.shape[:-1]:
            moved = moved[mask.astype(bool)]
        rows.append(moved.reshape(-1, moved.shape[-1]))
    return np.concatenate(rows).astype(np.float64)


def span_influence(entry: list[np.ndarray], exit_: list[np.ndarray], axis: int, feeds: Sequence[Feeds]) -> float:
    """ReplaceMe's span criterion: mean over read positions of 1 - cos(span input, span output) on channels."""
    x, y = token_rows(entry, axis, feeds), token_rows(exit_, axis, feeds)
    denom = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return float(np.mean(1.0 - (x * y).sum(1) / np.maximum(denom, 1e-30)))


def influence(entry: list[np.ndarray], exit_: list[np.ndarray]) -> float:
    """Block influence: mean over feeds of 1 - cos(block input, block output)."""
    values = []
    for x, y in zip(entry, exit_, strict=True):
        a, b = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        values.append(1.0 - float(a @ b) / denom if denom > 0 else 0.0)
    return float(np.mean(values))


class Remover:
    """Removes blocks from models, with a ReplaceMe map fitted to the original model's activations."""

    def __init__(self, original: ir.Model, feeds: Sequence[Feeds], replace: bool, ridge: float) -> None:
        self.original = original
        self.feeds = list(feeds)
        self.replace = replace
        self.ridge = ridge
        self._targets: dict[str, list[np.ndarray]] = {}

    def prefetch(self, model: ir.Model, blocks: Sequence[Block]) -> dict[str, list[np.ndarray]]:
        """Entry activations of ``blocks`` in ``model`` (and original exits, cached), in one run each."""
        spans = [extend_over_norm(model.graph, b) for b in blocks]
        missing = [s.exit for s in spans if s.exit not in self._targets]
        if self.replace and missing:
            self._targets.update(capture(self.original, missing, self.feeds))
        names = [b.entry for b in spans] + [b.exit for b in blocks]
        return capture(model, names, self.feeds)

    def fit(self, model: ir.Model, block: Block, acts: dict[str, list[np.ndarray]]) -> tuple[Block, LinearMap | None]:
        """The span to remove and, with replacement on, its fitted map."""
        if not self.replace:
            return block, None
        span = extend_over_norm(model.graph, block)
        return span, fit_linear(acts[span.entry], self._targets[span.exit], block.channel_axis, self.ridge)

    def merge_into_next(self, model: ir.Model, block: Block) -> str:
        """Bypass ``block`` with its post-norm, so that the next block's map is fitted over both (one map per span)."""
        return remove_block(model, extend_over_norm(model.graph, block)).replace("bypassed", "merged into next map")

    def remove(self, model: ir.Model, block: Block, acts: dict[str, list[np.ndarray]] | None = None) -> str:
        """Remove ``block`` from ``model`` in place; returns how ('bypassed', 'folded into ...')."""
        acts = acts if acts is not None else (self.prefetch(model, [block]) if self.replace else {})
        span, linear = self.fit(model, block, acts)
        return remove_block(model, span, linear)


def score_blocks(model: ir.Model, blocks: Sequence[Block], remover: Remover, score: str,
                 metric: Metric | None) -> dict[str, float]:
    """Importance of each block, keyed by its Add node: lower means drop it first."""
    acts = remover.prefetch(model, blocks)
    if score == "influence":
        return {b.nodes[-1]: influence(acts[b.entry], acts[b.exit]) for b in blocks}
    names = output_names(model)
    reference = [[acts[n][i] for n in names] for i in range(len(remover.feeds))]
    scores = {}
    for block in blocks:
        trial = clone(model)
        remover.remove(trial, block, acts)
        if score == "metric":
            assert metric is not None  # the pass loads it when score == "metric"
            scores[block.nodes[-1]] = -float(metric(to_proto(trial).SerializeToString(), remover.feeds))
        else:
            scores[block.nodes[-1]] = output_error(reference, run_outputs(trial, remover.feeds), score)
    return scores


def contiguous(graph: ir.Graph, first: Block, second: Block) -> bool:
    """Whether ``second`` reads exactly what ``first``'s span (over its post-norm) writes."""
    return extend_over_norm(graph, first).exit == second.entry


def score_spans(model: ir.Model, pool: Sequence[Block], remover: Remover, count: int) -> dict[str, float]:
    """Span influence of every run of ``count`` contiguous blocks, keyed by the run's first Add ({} if none).

    ReplaceMe's choice: the run whose input and output differ least is the one a linear map replaces best.
    """
    runs = [pool[i:i + count] for i in range(len(pool) - count + 1)]
    runs = [r for r in runs if all(contiguous(model.graph, a, b) for a, b in zip(r[:-1], r[1:], strict=True))]
    if not runs:
        return {}
    exits = {r[0].nodes[-1]: extend_over_norm(model.graph, r[-1]).exit for r in runs}
    acts = capture(model, [r[0].entry for r in runs] + list(exits.values()), remover.feeds)
    return {r[0].nodes[-1]: span_influence(acts[r[0].entry], acts[exits[r[0].nodes[-1]]], r[0].channel_axis,
                                           remover.feeds) for r in runs}
