"""Depth pruning: drop whole residual blocks (CNN blocks, transformer layers or their sub-blocks)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.core.errors import ConfigError
from edgec.core.ir import clone, to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.depth.blocks import Block, candidates, discover_blocks
from edgec.passes.depth.edit import quiet_ir
from edgec.passes.depth.score import SCORES, Metric, Remover, contiguous, load_metric, score_blocks, score_spans
from edgec.passes.sample_shapes import shapes_at_sample
from edgec.targets.profile import TargetProfile

logger = logging.getLogger(__name__)
OPTION = "pass-options.prune-depth"
GRANULARITIES = ("layer", "sub-block")


@dataclasses.dataclass(frozen=True)
class PruneDepthConfig:
    """Options of the prune-depth pass.

    ``num_blocks`` blocks are dropped, chosen by ``score`` (lowest first), unless ``blocks`` names
    them. ``score``: cosine / mse (model output error on calibration data after removing the block),
    influence (1 - cos(block input, block output)), span (ReplaceMe's criterion: the run of
    ``num_blocks`` contiguous blocks with the least 1 - cos(run input, run output) per position),
    metric (``metric`` = "package.module:function", called as function(model_bytes, feeds) -> float,
    higher is better); auto = span for layers with ``replace``, else cosine. ``iterative`` rescores
    after each removal (not with span, a joint choice). ``replace`` puts a linear map fitted on
    calibration activations (ReplaceMe) in the removed span's place, one map per run of contiguous
    removed blocks; ``ridge`` regularizes the fit. ``granularity``: layer or sub-block.
    """

    num_blocks: int = 1
    blocks: Sequence[str] = ()
    score: str = "auto"
    metric: str = ""
    iterative: bool = False
    replace: bool = False
    granularity: str = "layer"
    ridge: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 0:
            raise ConfigError(f"{OPTION}.num_blocks: expected an integer >= 0, got {self.num_blocks!r}")
        if isinstance(self.blocks, str) or not all(isinstance(b, str) for b in self.blocks):
            raise ConfigError(f"{OPTION}.blocks: expected a list of block names, got {self.blocks!r}")
        if self.score not in SCORES:
            raise ConfigError(f"{OPTION}.score: {self.score!r} is not one of {', '.join(SCORES)}")
        if self.score == "metric" and not self.metric:
            raise ConfigError(f"{OPTION}.metric: score 'metric' needs metric = 'package.module:function'")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"{OPTION}.granularity: {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if not isinstance(self.ridge, int | float) or self.ridge < 0:
            raise ConfigError(f"{OPTION}.ridge: expected a number >= 0, got {self.ridge!r}")


def removable_blocks(proto: onnx.ModelProto, granularity: str) -> int:
    """How many blocks prune-depth could drop from ``proto`` at ``granularity``."""
    return sum(b.removable for b in candidates(ir.serde.deserialize_model(proto).graph, granularity))


@register_pass("prune-depth")
class PruneDepthPass(EdgecPass[PruneDepthConfig]):
    """Remove residual blocks y = x + f(x): readers of y then read x (or a fitted linear map of x).

    Applies to residual Adds whose shortcut is an identity and whose span leaks no value: CNN blocks,
    transformer layers and their attention/FFN sub-blocks. Ops after the Add (ReLU, a post-norm
    LayerNormalization) stay, except that a fitted map replaces a post-norm with its block. Never
    touches projection/downsampling shortcuts, Concat (dense) blocks, graph inputs or outputs.
    """

    config_cls = PruneDepthConfig
    tolerance = Tolerance(lossy=True)
    handles_subgraphs = False  # blocks are found in the main graph; one read by a body stays (see _escape)
    search_space = {"num_blocks": Knob((0, 1, 2, 3, 4), ordered=True, idle_at=0, label="-{} blocks"),
                    "replace": Knob((False, True)), "granularity": Knob(GRANULARITIES)}

    @classmethod
    def refine_knobs(cls, proto: onnx.ModelProto, target: TargetProfile) -> Mapping[str, Knob]:
        """``num_blocks`` clipped to the blocks the model has at the default granularity: no candidate asks for more."""
        knob = cls.search_space["num_blocks"]
        most = removable_blocks(proto, PruneDepthConfig().granularity)
        return {**cls.search_space, "num_blocks": dataclasses.replace(knob, choices=tuple(
            c for c in knob.choices if c <= most))}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Score the removable blocks, drop the chosen ones in place and record what went."""
        common.ShapeInferencePass()(model)
        pool = self._pool(model)
        before = self._task_metric(model)
        keys = self._explicit(pool) if self.config.blocks else []
        feeds = self.ctx.calibration
        needs_data = self.config.replace or not self.config.blocks and self.config.num_blocks
        if needs_data and not feeds:
            raise ConfigError(f"{OPTION}: scoring and replacement need calibration data (--calib)")
        count = len(keys) if keys else self.config.num_blocks
        if count > len(pool):
            raise ConfigError(f"{OPTION}.num_blocks: asks to drop {count} blocks but the model has "
                              f"{len(pool)} removable at {self.config.granularity} granularity")
        remover = Remover(clone(model), feeds, self.config.replace, float(self.config.ridge))
        metric = load_metric(self.config.metric, f"{OPTION}.metric") if self.config.score == "metric" else None
        names = {b.nodes[-1]: b.name for b in pool}
        self._score = self._resolve_score()
        with quiet_ir():
            if not keys and count:
                keys = self._choose(model, remover, metric, count)
            how = {names[k]: way for k, way in self._remove_all(model, remover, keys)}
        self.record(granularity=self.config.granularity, blocks_removable=len(pool), blocks_dropped=list(how),
                    replacement=how, score=self._score if not self.config.blocks else "explicit")
        if before is not None:
            self.record(task_metric_before=before, task_metric_after=self._task_metric(model))
        return ir.passes.PassResult(model, modified=bool(how))

    def _pool(self, model: ir.Model) -> list[Block]:
        """Removable candidates; every block that is not removable leaves a skip note.

        Blocks are found at the first calibration sample's shapes: a residual Add of two [N, C, H, W]
        values whose symbolic H and W have different names is still a residual.
        """
        self._shapes = shapes_at_sample(model, self.ctx.calibration)
        if self._shapes:
            self.record(analysed_at={n: list(a.shape) for n, a in self.ctx.calibration[0].items()})
        layers, subs = discover_blocks(model.graph, self._shapes)
        for block in [*layers, *subs]:
            if not block.removable:
                self.skip(block.name, block.reason)
        return [b for b in self._candidates(model.graph) if b.removable]

    def _candidates(self, graph: ir.Graph) -> list[Block]:
        return candidates(graph, self.config.granularity, self._shapes)

    def _explicit(self, pool: list[Block]) -> list[str]:
        by_name = {b.name: b.nodes[-1] for b in pool}
        for name in self.config.blocks:
            if name not in by_name:
                listed = ", ".join(list(by_name)[:8]) + (", ..." if len(by_name) > 8 else "")
                raise ConfigError(f"{OPTION}.blocks: no removable block named {name!r} at "
                                  f"{self.config.granularity} granularity; blocks: {listed or 'none'}")
        return list(dict.fromkeys(by_name[n] for n in self.config.blocks))

    def _find(self, model: ir.Model, key: str) -> Block:
        """The current block whose residual Add is ``key`` (spans change as neighbours go)."""
        return next(b for b in self._candidates(model.graph) if b.nodes[-1] == key)

    def _resolve_score(self) -> str:
        if self.config.score != "auto":
            return self.config.score
        return "span" if self.config.replace and self.config.granularity == "layer" else "cosine"

    def _remove_all(self, model: ir.Model, remover: Remover, keys: list[str]) -> list[tuple[str, str]]:
        """Remove in stream order; with replacement a run of contiguous blocks gets one map (fewer fitted weights)."""
        order = {b.nodes[-1]: i for i, b in enumerate(self._candidates(model.graph))}
        keys = sorted(keys, key=order.__getitem__)
        done = []
        for key, after in zip(keys, [*keys[1:], None], strict=True):
            block = self._find(model, key)
            if self.config.replace and after is not None and contiguous(model.graph, block, self._find(model, after)):
                done.append((key, remover.merge_into_next(model, block)))
            else:
                done.append((key, remover.remove(model, block)))
        return done

    def _choose(self, model: ir.Model, remover: Remover, metric: Metric | None, count: int) -> list[str]:
        """Keys of the ``count`` least important blocks: scored once, or rescored after each removal."""
        pool = [b for b in self._candidates(model.graph) if b.removable]
        if self._score == "span":
            runs = score_spans(model, pool, remover, count)
            if runs:
                self.record(scores={b.name: runs[b.nodes[-1]] for b in pool if b.nodes[-1] in runs})
                start = [b.nodes[-1] for b in pool].index(min(runs, key=runs.__getitem__))
                return [b.nodes[-1] for b in pool[start:start + count]]
            self.skip(self.config.granularity, f"score 'span': no run of {count} contiguous blocks; scored by cosine")
            self._score = "cosine"
        if not self.config.iterative:
            scores = score_blocks(model, pool, remover, self._score, metric)
            self.record(scores={b.name: scores[b.nodes[-1]] for b in pool})
            picked = sorted(scores, key=scores.__getitem__)[:count]
            order = {b.nodes[-1]: i for i, b in enumerate(pool)}
            return sorted(picked, key=order.__getitem__)
        trial, picked = clone(model), []
        for _ in range(count):
            pool = [b for b in self._candidates(trial.graph) if b.removable]
            scores = score_blocks(trial, pool, remover, self._score, metric)
            best = min(scores, key=scores.__getitem__)
            remover.remove(trial, self._find(trial, best))
            picked.append(best)
        return picked

    def _task_metric(self, model: ir.Model) -> dict[str, Any] | None:
        if self.ctx.evaluate is None:
            return None
        return self.ctx.evaluate(to_proto(model).SerializeToString())
