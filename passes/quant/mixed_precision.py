"""mixed-precision: one precision per node (int8 / int4 / fp16 / fp8 / fp32), from a map or from sensitivity."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.errors import CalibrationError, ConfigError
from edgec.core.ir import Feeds, to_ir, to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.context import BuildContext
from edgec.passes.quant import precision, static
from edgec.passes.quant import sensitivity as sens
from edgec.passes.quant.calib import checked_feeds
from edgec.passes.quant.common import FP16, INT8_DYNAMIC, ensure_opset, replace_model, require_dtype, workdir
from edgec.passes.quant.fp8 import FP8_OPSET, Fp8Config, Fp8Pass
from edgec.passes.quant.quantize_dynamic import matmul_graph
from edgec.passes.quant.quantize_int4 import QuantizeInt4Config, QuantizeInt4Pass
from edgec.passes.quant.quantize_int8 import PER_CHANNEL_OPSET, QuantizeInt8Config, QuantizeInt8Pass
from edgec.passes.quant.subgraphs import body_owners, owner_label
from edgec.targets.profile import TargetProfile

# The formats most nodes can take (``default``), and the precisions the most sensitive ones take instead.
LOW = ("int8", "int4", "fp8", "fp16")
PRECISE = ("auto", "fp32", "fp16")
KEEP_PRECISE = (0, 1, 2, 4, 8, 16)


@dataclasses.dataclass(frozen=True)
class MixedPrecisionConfig:
    """Options of mixed-precision.

    ``precisions`` maps node names to ``int8``, ``int4``, ``fp16``, ``fp8`` or ``fp32``; the other
    Conv/ConvTranspose/Gemm/MatMul nodes take ``default`` where it applies to them (fp32 otherwise,
    with a note). ``keep_precise = k``: of the nodes at ``default``, the k whose ``default`` alone moves the
    outputs most (on held-out calibration samples) take ``precise`` instead: ``fp16`` where the target runs
    it and ``default`` is below it (``auto``), else ``fp32``. ``calibration`` and ``samples`` are those of
    the int8 nodes' static ranges.
    """

    precisions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default: str = "int8"
    keep_precise: int = 0
    precise: Literal["auto", "fp32", "fp16"] = "auto"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = 8

    def __post_init__(self) -> None:
        precision.check_precision_names(self.precisions, self.default, "mixed-precision")
        if isinstance(self.keep_precise, bool) or not isinstance(self.keep_precise, int) or self.keep_precise < 0:
            raise ConfigError(f"mixed-precision: keep_precise must be a whole number, 0 or more, "
                              f"not {self.keep_precise!r}")
        if self.precise not in PRECISE:
            raise ConfigError(f"mixed-precision: precise: {self.precise!r} is not one of {', '.join(PRECISE)}")


@register_pass("mixed-precision")
class MixedPrecisionPass(EdgecPass[MixedPrecisionConfig]):
    """Give each weighted node its own precision: a map's, else ``default``, the most sensitive ones ``precise``.

    With ``keep_precise = k`` the pass ranks the nodes at ``default`` by the output error each causes alone
    (the model with only that node at ``default``, against the float input, as ``edgec.core.agreement``
    scores it) on held-out calibration samples: those past the first ``samples`` when there are any (the
    ranges are then what they are without ``keep_precise``), else every 4th, the others setting the ranges;
    no sample both sets a range and ranks (``sensitivity.held_out_split``). Where no node is int8 (int4,
    fp8, fp16 set no range) every sample ranks. The k first take ``precise``. A node the map names keeps
    the map's precision and is not ranked. The ranking and the resulting per-node map are in this pass's
    record (``sensitivity``, ``precision_of``).

    Applies the precisions in an order where each step only sees float nodes it owns: int8 first
    (quantize-int8 with every non-int8 node excluded and ``placement = "all"``, so that a rebuild
    is exact: no host timing decides anything), then int4 MatMulNBits and fp8 weights (their passes,
    told to exclude every other node), then fp16 compute (Casts around each node, see
    ``precision.cast_nodes_to_fp16``). ``node_choices`` lists what each node can take on a target. To the
    search the pass is one precision, ``mixed``, with ``default`` (the formats the target runs for this
    model) and ``keep_precise`` as its knobs. Nodes inside If/Loop/Scan bodies stay fp32, with a note per
    body. Graph I/O dtypes are never changed. Each step's record is nested under its precision in this
    pass's record.
    """

    config_cls = MixedPrecisionConfig
    # Same floor as each precision's own pass: a broken step (wrong scales, swapped axes) is far lower.
    tolerance = Tolerance(lossy=True, min_cosine=0.9)
    # keep_precise is categorical, not ordered: the search keeps an ordered knob of a precision pass at its
    # value in candidates of another precision, so each level would rebuild the same fp32/int8 model.
    # idle_at only keeps the label short ("mixed, 2 precise": int8 elsewhere); a precision pass is never idle.
    search_space: ClassVar[Mapping[str, Knob]] = {
        "default": Knob(LOW, prior="int8", idle_at="int8", label="low {}"),
        "keep_precise": Knob(KEEP_PRECISE, idle_at=0, label="{} precise"),
    }
    precision = "mixed"

    @classmethod
    def node_choices(cls, model: ir.Model | onnx.ModelProto, target: TargetProfile) -> dict[str, tuple[str, ...]]:
        """``{node name: precisions target runs for it}``: the per-node space of ``model``."""
        proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
        return precision.node_choices(proto, target)

    @classmethod
    def low_formats(cls, proto: onnx.ModelProto, target: TargetProfile) -> dict[str, int]:
        """``{format in LOW: how many nodes of proto can take it on target}``, formats no node can take left out."""
        counts = collections.Counter(p for choices in precision.node_choices(proto, target).values() for p in choices)
        return {low: counts[low] for low in LOW if counts[low]}

    @classmethod
    def precision_pass(cls, proto: onnx.ModelProto, target: TargetProfile) -> type[EdgecPass[Any]] | None:
        """This pass where the target runs at least one low format for some node of ``proto``, else None."""
        return cls if cls.low_formats(proto, target) else None

    @classmethod
    def refine_knobs(cls, proto: onnx.ModelProto, target: TargetProfile) -> Mapping[str, Knob]:
        """``default``: the low formats the target runs here; ``keep_precise``: fewer than the nodes that take one."""
        lows = cls.low_formats(proto, target)
        most = max(lows.values(), default=0)
        keep = tuple(k for k in KEEP_PRECISE if k < most) or (0,)
        return {"default": dataclasses.replace(cls.search_space["default"], choices=tuple(lows)),
                "keep_precise": dataclasses.replace(cls.search_space["keep_precise"], choices=keep)}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Resolve each node's precision and run the quantization steps on their nodes in place."""
        proto = to_proto(model)
        resolved, notes = precision.resolve(proto, self.ctx.target, self.config.precisions, self.config.default,
                                            self.name)
        for node, why in notes.items():
            self.skip(node, why)
        for owner in body_owners(proto.graph):
            self.skip(owner_label(owner), "nodes inside If/Loop/Scan bodies take no per-node precision; kept fp32")
        ranges = self.ctx
        if self.config.keep_precise:
            resolved, ranges = self._keep_precise(proto, resolved)
        by_precision: dict[str, set[str]] = collections.defaultdict(set)
        for node, chosen in resolved.items():
            by_precision[chosen].add(node)
        self.record(nodes_by_precision={p: len(by_precision[p]) for p in precision.PRECISIONS if by_precision[p]},
                    precision_of=dict(resolved))
        if by_precision["int8"]:
            # the unlisted nodes (Relu, Add, pools) go int8 with their neighbours only when int8 is the default
            others = {n.name for n in proto.graph.node if n.name not in resolved and self.config.default != "int8"}
            exclude = sorted(others | (set(resolved) - by_precision["int8"]))
            # ranked: the ranges come from the samples that did not rank (as many of them as there are)
            samples = self.config.samples if ranges is self.ctx else min(self.config.samples, len(ranges.calibration))
            self._step(model, "int8", QuantizeInt8Pass, QuantizeInt8Config(
                calibration=self.config.calibration, samples=samples, placement="all", exclude_nodes=tuple(exclude)),
                ranges)
        for name, pass_cls, config_of in _LATER_STEPS:
            if by_precision[name]:
                # every other node, those in If/Loop/Scan bodies included (the int4 quantizer enters them)
                # a node in a graph always has a name: onnx_ir's name authority gives it one
                rest = tuple(sorted(cast(str, n.name) for n in model.graph.all_nodes()
                                    if n.name not in by_precision[name]))
                self._step(model, name, pass_cls, config_of(rest), self.ctx)
        if by_precision["fp16"]:
            self._fp16(model, by_precision["fp16"])
        modified = any(by_precision[p] for p in precision.PRECISIONS if p != "fp32")
        return ir.passes.PassResult(model, modified=modified)

    def _precise(self, choices: tuple[str, ...]) -> str:
        """What a node kept precise takes: ``precise``, fp16 under ``auto`` where the target runs it and it is finer."""
        low, wanted = self.config.default, self.config.precise
        if wanted == "auto":
            wanted = "fp16" if FP16 in self.ctx.target.quantization_formats and low in ("int8", "int4", "fp8") \
                else "fp32"
        return wanted if wanted in choices and wanted != low else "fp32"

    def _keep_precise(self, proto: onnx.ModelProto, resolved: dict[str, str]) -> tuple[dict[str, str], BuildContext]:
        """``resolved`` with the ``keep_precise`` nodes most sensitive to ``default`` precise; the ranges' context.

        Ranks on the held-out samples only; the returned context holds the others, which set the int8 ranges.
        """
        low, k = self.config.default, self.config.keep_precise
        candidates = [n for n, p in resolved.items() if p == low and n not in self.config.precisions]
        if low == "fp32" or not candidates:
            self.skip("keep_precise", f"no node is at default {low} to keep precise; nothing ranked")
            return resolved, self.ctx
        feeds = list(self.ctx.calibration)
        if "int8" in resolved.values():  # the ranges' samples, counted and checked before any build
            checked_feeds(proto, feeds, self.config.samples, self.name)
            split = sens.held_out_split(feeds, self.config.samples)
        elif feeds:  # weight-only formats and fp16 set no range: every sample ranks
            split = sens.HeldOutSplit([], feeds, tuple(range(len(feeds))))
        else:
            raise CalibrationError(f"{self.name}: keep_precise = {k} ranks nodes on calibration samples; none given")
        if split.in_sample:
            self.skip("keep_precise", "one calibration sample: it both sets the ranges and ranks the nodes")
        key = self._ranking_key(proto, candidates)
        ranked = _RANKINGS.get(key)
        if ranked is None:
            reference = sens.outputs_on(proto, split.held_out)
            with workdir() as folder:
                ranked = sens.rank(self._alone_builder(proto, split.fit, folder), candidates,
                                   lambda built: sens.agreement_error(reference, built, split.held_out))
            _RANKINGS[key] = ranked
            while len(_RANKINGS) > _RANKINGS_KEPT:
                del _RANKINGS[next(iter(_RANKINGS))]
        choices = precision.node_choices(proto, self.ctx.target)
        kept = {node: self._precise(choices[node]) for node, _ in ranked[:k]}
        for node in [n for n, p in kept.items() if self.config.precise == "fp16" != p]:
            self.skip(node, f"precise fp16 does not apply here or on {self.ctx.target.name}; kept fp32")
        if k > len(ranked):
            self.skip("keep_precise", f"keep_precise = {k} but only {len(ranked)} nodes are at {low}: all kept precise")
        self.record(sensitivity=[{"node": n, "error": float(f"{e:.4g}")} for n, e in ranked], sensitivity_to=low,
                    ranked_on={"fit_samples": len(split.fit), "held_out_samples": len(split.held_out),
                               "held_out_indices": list(split.held_out_indices), "in_sample": split.in_sample},
                    kept_precise=kept)
        return {**resolved, **kept}, dataclasses.replace(self.ctx, calibration=split.fit)

    def _ranking_key(self, proto: onnx.ModelProto, candidates: list[str]) -> str:
        """Everything a ranking depends on: model, target, format, range options, nodes ranked, samples."""
        digest = hashlib.sha256(proto.SerializeToString())
        digest.update(repr((self.ctx.target.name, self.config.default, self.config.calibration, self.config.samples,
                            candidates)).encode())
        for feed in self.ctx.calibration:
            for name in sorted(feed):
                value = np.ascontiguousarray(feed[name])
                digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
                digest.update(value.tobytes())
        return digest.hexdigest()

    def _alone_builder(self, proto: onnx.ModelProto, fit: list[Feeds], folder: Path
                       ) -> Callable[[str], onnx.ModelProto]:
        """``node -> proto with only that node at default``, its ranges (int8) set on ``fit``.

        What one build costs is paid once where it can be: the opset upgrade a format needs and, for static
        int8, ORT's preprocessing and the calibration ranges (cached in ``folder``), as quantize-int8 ranks
        its own nodes. Any other format runs this pass on a copy with a one-node map.
        """
        low, samples = self.config.default, max(min(self.config.samples, len(fit)), 1)  # no fit: no int8 node
        if low == "int8" and not (matmul_graph(proto) and INT8_DYNAMIC in self.ctx.target.quantization_formats):
            base, _ = ensure_opset(proto, PER_CHANNEL_OPSET, "per-channel int8 weights")
            src, pre, cache = folder / "fp32.onnx", folder / "pre.onnx", folder / "ranges.json"
            onnx.save(base, str(src))
            static.preprocess(src, pre)
            opts = static.StaticOptions(self.config.calibration, True, self.ctx.target.activation_dtype)
            counter = itertools.count()
            return lambda node: static.quantize(pre, folder / f"q{next(counter)}.onnx", fit[:samples], opts,
                                                cache=cache, only=[node])
        base = ensure_opset(proto, FP8_OPSET, "float8 DequantizeLinear")[0] if low == "fp8" else proto
        scratch = BuildContext(self.ctx.target, fit, self.ctx.seed, calibration_source=self.ctx.calibration_source)

        def build(node: str) -> onnx.ModelProto:
            config = MixedPrecisionConfig(precisions={node: low}, default="fp32", calibration=self.config.calibration,
                                          samples=samples)
            model = to_ir(base)
            MixedPrecisionPass(config, scratch).call(model)
            return to_proto(model)

        return build

    def _fp16(self, model: ir.Model, names: set[str]) -> None:
        require_dtype(self.ctx, "float16", self.name)
        proto = to_proto(model)
        self.record(fp16={"nodes": precision.cast_nodes_to_fp16(proto, names)})
        replace_model(model, proto)

    def _step(self, model: ir.Model, name: str, pass_cls: type[EdgecPass[Any]], config: Any,
              ctx: BuildContext) -> None:
        """Run one precision's pass on ``model`` in place; its record goes under ``name`` in this one's."""
        inner = pass_cls(config, ctx)
        stats = self.ctx.report.stats
        saved = stats.pop(inner.name, None)  # an earlier pass of that name keeps its own record
        inner.call(model)
        self.record(**{name: stats.pop(inner.name, {})})
        if saved is not None:
            stats[inner.name] = saved


# Rankings by key (``_ranking_key``): a search builds keep_precise = 1, 2, 4, ... of one model and format in
# one worker, and each would rank the same nodes the same way again (minutes on a transformer). A memo of a
# deterministic result, bounded; nothing else is kept between builds.
_RANKINGS: dict[str, list[tuple[str, float]]] = {}
_RANKINGS_KEPT = 8

# After int8, each step excludes every node but its own (by name, on the graph as it is then).
_LATER_STEPS = (
    ("int4", QuantizeInt4Pass, lambda rest: QuantizeInt4Config(exclude_nodes=rest)),
    ("fp8", Fp8Pass, lambda rest: Fp8Config(exclude_nodes=rest)),
)
