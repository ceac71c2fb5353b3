"""Channel pruning, constrained or unconstrained (UPSCALE), exported with reordered channels."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.core.errors import CalibrationError, ConfigError, UnsupportedOpError
from edgec.core.ir import clone
from edgec.passes.base import EdgecPass, Knob, LayerLevels, Tolerance, register_pass
from edgec.passes.pruning.channel_export import Selection, apply_plan, choose_orders, selections
from edgec.passes.pruning.channel_graph import analyze
from edgec.passes.pruning.heads import prune_attention_heads
from edgec.passes.pruning.layers import LEVELS, group_names, layer_levels
from edgec.passes.pruning.plan import ROUNDINGS, Plan, input_mean_squares, make_plan, ratio_breakpoints
from edgec.passes.pruning.records import ChannelGraph
from edgec.passes.pruning.recovery import METHODS as RECOVERIES
from edgec.passes.pruning.recovery import recover
from edgec.passes.sample_shapes import sample_shapes
from edgec.targets.profile import TargetProfile

logger = logging.getLogger(__name__)

MODES = ("constrained", "unconstrained")
IMPORTANCES = ("l1", "l2", "bn", "activation")
ALLOCATIONS = ("budgeted", "per-consumer", "global")


def _check_ratio(value: Any, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"prune-channels: {option} must be a number in [0, 1), got {value!r}")


def _name_nodes(model: ir.Model) -> None:
    """Give unnamed nodes unique names: the analysis and the plan refer to nodes by name."""
    taken = {n.name for n in model.graph if n.name}
    for index, node in enumerate(model.graph):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


@dataclasses.dataclass(frozen=True)
class PruneChannelsConfig:
    """Options of prune-channels.

    ``ratio`` is the fraction of input channels each consumer (Conv/Gemm/MatMul) drops; ``layers``
    overrides it per consumer node name (0 keeps that consumer whole); ``groups`` per channel group, named
    by a node that computes it (``passes.pruning.layers``: the search's per-layer widths), for every
    consumer reading that group. ``mode`` picks one mask per
    channel group (constrained) or one per consumer (unconstrained). ``allocation``: ``budgeted``
    (unconstrained only) gives each group the MACs the constrained mask would spend and chooses the
    reads within them (``_prune_budget``); ``per-consumer`` has every consumer read its own ratio's
    worth, producers computing the union (UPSCALE as published: more MACs than constrained at the
    same ratio); ``global`` (either mode) spends the uniform constrained plan's MACs where they keep
    the most output energy across the whole model, so per-layer ratios differ. ``importance``:
    weight L1/L2 norm, BatchNorm scale, or ``activation`` (weight column norm times the input's RMS
    on calibration data). ``rounding``: how a constrained plan rounds each group's kept count to the
    target's channel multiple, ``up`` (at least the ratio's share kept) or ``dithered`` (unbiased,
    each width stepping at its own ratios; the search's choice, see ``_prune_plan.round_keep``).
    ``heads`` is the fraction of each attention block's heads to drop (at least one is kept; see
    ``_prune_heads``), ranked on calibration data with ``activation`` importance, else by weights.
    ``recovery`` fixes the pruned layers from calibration data (see ``_prune_recovery``): ``bias``
    matches each layer's output mean, ``lstsq`` refits its kept weights too, ridge-regularized by
    ``ridge`` (relative to the input covariance's mean eigenvalue).
    """

    ratio: float = 0.3
    layers: Mapping[str, float] = dataclasses.field(default_factory=dict)
    groups: Mapping[str, float] = dataclasses.field(default_factory=dict)
    heads: float = 0.0
    mode: str = "unconstrained"
    allocation: str = "budgeted"
    importance: str = "l2"
    reorder: bool = True
    rounding: str = "up"
    recovery: str = "none"
    ridge: float = 0.01

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "ratio")
        _check_ratio(self.heads, "heads")
        if not isinstance(self.layers, Mapping):
            raise ConfigError(f"prune-channels: layers must be a table of node name = ratio, got {self.layers!r}")
        for name, value in self.layers.items():
            _check_ratio(value, f"layers.{name}")
        if not isinstance(self.groups, Mapping):
            raise ConfigError(f"prune-channels: groups must be a table of node name = ratio, got {self.groups!r}")
        for name, value in self.groups.items():
            _check_ratio(value, f"groups.{name}")
        if self.mode not in MODES:
            raise ConfigError(f"prune-channels: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"prune-channels: allocation must be one of {', '.join(ALLOCATIONS)}, "
                              f"got {self.allocation!r}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"prune-channels: importance must be one of {', '.join(IMPORTANCES)}, "
                              f"got {self.importance!r}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"prune-channels: rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.recovery not in RECOVERIES:
            raise ConfigError(f"prune-channels: recovery must be one of {', '.join(RECOVERIES)}, "
                              f"got {self.recovery!r}")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not self.ridge > 0:
            raise ConfigError(f"prune-channels: ridge must be a number > 0, got {self.ridge!r}")


@register_pass("prune-channels")
class PruneChannelsPass(EdgecPass[PruneChannelsConfig]):
    """Remove channels of Conv/Gemm/MatMul layers and everything indexed by them.

    Changes weight rows and columns, BatchNorm and bias constants, depthwise group counts and the
    shape constants of flattening Reshapes; in unconstrained mode it adds a Slice (or Gather) in
    front of consumers that read part of a channel group. With ``recovery`` on, the weights and
    biases of the layers whose inputs changed are refit from calibration data (a bias input, or an
    Add after a bias-less MatMul, may be added). Applies to channel groups the analysis can follow
    (see ``_channel_graph``); a group that reaches an unknown op, a graph output or a subgraph is
    frozen and reported. Never changes graph inputs, outputs or If/Loop bodies.
    """

    config_cls = PruneChannelsConfig
    # The ratio is searched as any value in [0, 0.6], so the search can land on a latency target. The
    # priors: bench/RESULTS.md (channel pruning: accuracy) finds lstsq recovery best at every FLOP level
    # of the trained zoo and activation importance ahead of weight norms; constrained masks are within
    # noise of unconstrained ones there and need no selection copies at inference.
    search_space = {
        "ratio": Knob((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6), ordered=True, continuous=True, idle_at=0.0,
                      label="ratio {:.3g}"),
        "heads": Knob((0.0, 0.25, 0.5)),
        "mode": Knob(MODES, prior="constrained"),
        "recovery": Knob(RECOVERIES, prior="lstsq"),
        "importance": Knob(("l2", "activation"), prior="activation"),
        "allocation": Knob(ALLOCATIONS),
        "rounding": Knob(("dithered",)),
        # Per-layer widths: one ratio per channel group, explored by the search around its uniform choice.
        "groups": Knob(LEVELS, per_layer=True, idle_at=(), label="per-layer widths"),
    }
    # Lossy by design: the pipeline records cosine on calibration data but never fails on it (a
    # random-init model pruned hard can reach a negative cosine); accuracy is the search's job.
    tolerance = Tolerance(lossy=True)
    handles_subgraphs = False

    @classmethod
    def refine_knobs(cls, proto: onnx.ModelProto, target: TargetProfile) -> Mapping[str, Knob]:
        """The search space with the ratio's breakpoints on this model.

        A breakpoint is where some layer's channel count, rounded to the target's channel multiple with the
        rounding the search builds with, changes.
        """
        ratio = cls.search_space["ratio"]
        rounding = cls.search_space["rounding"].choices[0]
        steps = ratio_breakpoints(proto, max(target.channel_multiple, 1), min(ratio.choices), max(ratio.choices),
                                  rounding)
        return {**cls.search_space, "ratio": dataclasses.replace(ratio, breakpoints=steps)}

    @classmethod
    def layer_levels(cls, proto: onnx.ModelProto, target: TargetProfile, feeds: Mapping[str, Any] | None,
                     option: str, levels: tuple[float, ...], options: Mapping[str, Any]) -> LayerLevels | None:
        """The prunable channel groups of ``proto`` as the layers of ``groups``, each able to take ``levels``.

        None under ``allocation = "global"``, which spends one MAC budget over the whole model: a group's
        ratio then only shifts that budget, and the widths the levels promise would not be built.
        """
        if option != "groups" or options.get("allocation") == "global":
            return None
        rounding = options.get("rounding", PruneChannelsConfig.rounding)
        model = ir.serde.deserialize_model(proto)
        common.ShapeInferencePass()(model)
        _name_nodes(model)
        with sample_shapes(model, [feeds] if feeds else []):
            cg = analyze(model)
            layers = layer_levels(model, cg, max(target.channel_multiple, 1), levels, rounding)
        return layers if layers.layers else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Prune heads, then channels, in place; refit the changed layers when ``recovery`` is on."""
        common.ShapeInferencePass()(model)
        _name_nodes(model)
        heads_removed = self._prune_heads(model)
        original = self._original(model)
        with sample_shapes(model, self.ctx.calibration) as lent:
            if lent:
                self.record(analysed_at={n: list(a.shape) for n, a in self.ctx.calibration[0].items()})
            pruned = self._prune_channels(model)
        if pruned is None:
            return ir.passes.PassResult(model, modified=heads_removed > 0)
        cg, plan, orders = pruned
        if original is not None:
            fixed, skipped = recover(model, original, cg, plan, orders, self.ctx.calibration, self.config.recovery,
                                     self.config.ridge, self.ctx.seed)
            for node, reason in skipped:
                self.skip(node, f"recovery: {reason}")
            self.record(recovery=self.config.recovery, recovered_layers=fixed,
                        calibration_feeds=len(self.ctx.calibration))
        return ir.passes.PassResult(model, modified=True)

    def _prune_channels(self, model: ir.Model) -> tuple[ChannelGraph, Plan, dict[int, np.ndarray]] | None:
        """Analyse, plan and rewrite at static shapes; None when the plan prunes nothing."""
        cg = analyze(model)
        self._check_layers(model, cg)
        self._report_frozen(cg)
        cfg = self.config
        plan = make_plan(model, cg, lambda node: cfg.layers.get(node, cfg.ratio), cfg.mode, cfg.importance,
                         self.ctx.target.channel_multiple, self._input_mean_squares(model, cg),
                         allocation=cfg.allocation, rounding=cfg.rounding, group_ratios=self._group_ratios(cg))
        if not plan.prunes_anything(cg):
            self.record(mode=cfg.mode, channels_before=sum(cg.space_sizes), channels_after=sum(cg.space_sizes))
            return None
        kinds = tuple(self.ctx.target.channel_selection)
        before = selections(model, cg, plan, choose_orders(cg, plan, reorder=False), kinds)
        orders = choose_orders(cg, plan, reorder=cfg.reorder)
        after = apply_plan(model, cg, plan, orders, kinds)
        self._record(cg, plan, before, after)
        return cg, plan, orders

    def _prune_heads(self, model: ir.Model) -> int:
        """Drop the ``heads`` fraction of each attention block's heads; returns how many were removed."""
        if self.config.heads == 0.0:
            return 0
        feeds = None
        if self.config.importance == "activation":  # else weight norms, whatever the channel importance
            if not self.ctx.calibration:
                raise CalibrationError("prune-channels: importance = activation needs calibration data (--calib)")
            feeds = self.ctx.calibration
        result = prune_attention_heads(model, self.config.heads, feeds)
        for node, reason in result.skipped:
            self.skip(node, reason)
        self.record(attention_blocks=result.blocks, heads_before=result.heads_before,
                    heads_after=result.heads_after, head_importance=result.importance)
        if result.heads_after != result.heads_before:
            common.ShapeInferencePass()(model)  # the channel analysis reads the new widths
        return result.heads_before - result.heads_after

    def _input_mean_squares(self, model: ir.Model, cg: ChannelGraph) -> dict[str, np.ndarray] | None:
        if self.config.importance != "activation":
            return None
        if not self.ctx.calibration:
            raise CalibrationError("prune-channels: importance = activation needs calibration data (--calib)")
        return input_mean_squares(model, cg, self.ctx.calibration)

    def _original(self, model: ir.Model) -> ir.Model | None:
        """A copy of the unpruned model for recovery, or None when recovery is off or has no data."""
        if self.config.recovery == "none":
            return None
        if not self.ctx.calibration:
            self.skip("recovery", "no calibration data: the pruned layers are left as they are")
            return None
        return clone(model)

    def _check_layers(self, model: ir.Model, cg: ChannelGraph) -> None:
        names = {n.name for n in model.graph}
        consumers = {c.node for c in cg.consumers}
        for name in self.config.layers:
            if name not in names:
                raise ConfigError(f"prune-channels: layers: no node named {name!r} in the model")
            if name not in consumers:
                self.skip(name, "not a prunable layer (no Conv/Gemm/MatMul reading tracked channels)")
        frozen = cg.frozen_groups()
        if not any(cg.group(s) not in frozen for c in cg.consumers for s in c.layout.pieces):
            first = next(iter(frozen.values()), "no Conv/Gemm/MatMul reads another's output")
            raise UnsupportedOpError(f"prune-channels: nothing prunable in this model (first frozen by {first})")

    def _group_ratios(self, cg: ChannelGraph) -> dict[int, float]:
        """``groups`` by group id; a name that computes no prunable group is skipped with a note."""
        by_name = {name: g for g, name in group_names(cg).items()}
        out = {}
        for name, ratio in self.config.groups.items():
            if name in by_name:
                out[by_name[name]] = ratio
            else:
                self.skip(name, "groups: names no prunable channel group (see passes/pruning/layers.py)")
        if out:
            self.record(group_ratios={name: self.config.groups[name] for name in self.config.groups
                                      if name in by_name})
        return out

    def _report_frozen(self, cg: ChannelGraph) -> None:
        for reason in sorted(set(cg.frozen_groups().values())):
            self.skip(reason, "channel mapping unknown or fixed here: its channel group is kept whole")

    def _record(self, cg: ChannelGraph, plan: Plan, before: list[Selection], after: list[Selection]) -> None:
        groups = cg.groups()
        kinds: dict[str, int] = {}
        for sel in after:
            kinds[sel.kind] = kinds.get(sel.kind, 0) + 1
        self.record(
            mode=self.config.mode,
            allocation=self.config.allocation,
            importance=self.config.importance,
            ratio=self.config.ratio,
            groups=len(groups),
            frozen_groups=len(cg.frozen_groups()),
            channels_before=sum(cg.space_sizes[s] for s in range(len(cg.space_sizes))),
            channels_after=sum(len(plan.live[cg.group(s)]) for s in range(len(cg.space_sizes))),
            selections=kinds,
            gather_bytes_before=sum(s.bytes for s in before if s.kind == "gather"),
            gather_bytes_after=sum(s.bytes for s in after if s.kind == "gather"),
            copy_bytes_before=sum(s.bytes for s in before),
            copy_bytes_after=sum(s.bytes for s in after),
            copies_per_node={s.node: {"kind": s.kind, "bytes": s.bytes, "kind_before": b.kind}
                             for s, b in zip(after, before, strict=True) if s.bytes or b.bytes},
        )
