"""quantize-int8: static QDQ int8 (ORT's quantize_static), with layout-aware placement and guided recovery."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import onnx
import onnx_ir as ir

from edgec.core.errors import CalibrationError, ConfigError, UnsupportedOpError
from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.quant import concat_ranges, int8ops, placement, static, subgraphs
from edgec.passes.quant import sensitivity as sens
from edgec.passes.quant.analysis import explain
from edgec.passes.quant.calib import check_finite_outputs, checked_feeds
from edgec.passes.quant.common import (
    INT8_DYNAMIC,
    INT8_QDQ,
    ensure_opset,
    has_onnx_domain,
    has_op,
    name_nodes,
    nonfinite_weight,
    replace_model,
    require_format,
    workdir,
)
from edgec.passes.quant.pad import pad_depthwise
from edgec.passes.quant.quantize_dynamic import QuantizeDynamicPass, dynamic_quantize, matmul_graph
from edgec.targets.profile import TargetProfile

logger = logging.getLogger(__name__)

PER_CHANNEL_OPSET = 13  # DequantizeLinear has no ``axis`` before opset 13


@dataclasses.dataclass(frozen=True)
class QuantizeInt8Config:
    """Options of quantize-int8.

    ``max_drop`` is the accuracy budget (primary metric, absolute; 0.005 = half a point of accuracy), or
    1 - cosine to fp32 when the model has no task metric.
    ``int8_rewrites`` turns on the exact float rewrites that let ORT keep mobile CNNs int8
    (HardSwish/HardSigmoid/ReduceMean, depthwise widths padded to the target's channel multiple), and
    the one that keeps SiLU float as a single QuickGelu where the target's first EP runs it.
    ``concat_range_ratio``: a Concat whose inputs' ranges on the calibration feeds differ more than this many
    times stays float, with every node after it (one int8 scale cannot hold pixels and probabilities); ``inf``
    turns the rule off.
    """

    method: Literal["auto", "static", "dynamic"] = "auto"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = 8
    per_channel: bool = True
    activation_dtype: Literal["target", "uint8", "int8"] = "target"
    placement: Literal["auto", "all", "float-islands", "float-islands+depthwise"] = "auto"
    int8_rewrites: bool = True
    exclude_nodes: tuple[str, ...] = ()
    # The k most sensitive weighted nodes (ranked one at a time, as max_drop's recovery ranks them) stay
    # float: a per-node precision the search can set without knowing node names.
    keep_float: int = 0
    max_drop: float | None = None
    max_recovery_steps: int = 8
    sensitivity_plot: str = ""
    concat_range_ratio: float = concat_ranges.MAX_RANGE_RATIO


@register_pass("quantize-int8")
class QuantizeInt8Pass(EdgecPass[QuantizeInt8Config]):
    """Quantize weights (int8, per channel) and activations (the target's int8 dtype) as QDQ.

    Applies to any float model. ``method = "auto"`` picks dynamic int8 for Conv-free MatMul graphs
    (transformers: static MinMax ranges wreck their activations) where the target runs it, static
    QDQ otherwise. Old opsets are upgraded to 13 for per-channel scales (recorded). Before
    quantizing, ops ORT has no int8 kernel for are rewritten into ones it has (_quant_int8ops) and
    depthwise widths are padded (_quant_pad). On a measurable host, ``placement = "auto"`` times
    all-int8 against leaving a float prefix of the network (_quant_placement) and against fp32
    itself, and keeps the fastest: if fp32 wins, the model is returned unquantized with a note.
    If/Loop/Scan bodies stay float (a note names each): ORT's QDQ quantizer does not enter them, and
    the Relu/Clip nodes that make or read a value a body reads are kept float so that it reads the same
    value. Never touches graph I/O dtypes.
    """

    config_cls = QuantizeInt8Config
    # Expected int8 error is ~0.95-0.9999 cosine; a broken graph (wrong ranges, swapped axes) is far lower.
    tolerance = Tolerance(lossy=True, min_cosine=0.9)
    # placement "auto" times the build host: a rebuild of the search's choice would not be exact.
    search_space = {"calibration": Knob(("minmax", "entropy", "percentile")), "per_channel": Knob((True, False)),
                    "placement": Knob(("auto", "all"), timing_dependent=("auto",)), "keep_float": Knob((0, 1, 4))}
    precision = "int8"

    @classmethod
    def precision_pass(cls, proto: onnx.ModelProto, target: TargetProfile) -> type[EdgecPass[Any]] | None:
        """The pass that runs int8 on ``target``: quantize-dynamic, this one, or None.

        quantize-dynamic for MatMul graphs where the target runs it (``method = "auto"`` would pick dynamic
        anyway), else itself where the target runs int8 QDQ.
        """
        if matmul_graph(proto) and INT8_DYNAMIC in target.quantization_formats:
            return QuantizeDynamicPass
        return cls if INT8_QDQ in target.quantization_formats else None

    def requires(self, model: ir.Model) -> None:
        """Finite weights: a NaN or infinite one has no int8 scale (ORT would quantize it to garbage)."""
        found = nonfinite_weight(model)
        if found:
            raise ir.passes.PreconditionError(found)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Quantize the model to int8 in place: dynamic or static QDQ, as ``method`` and the target choose."""
        proto = to_proto(model)
        if not has_onnx_domain(proto):
            self.skip("model", "no ONNX-domain ops (ai.onnx.ml only): nothing to quantize")
            return ir.passes.PassResult(model, modified=False)
        if self._use_dynamic(proto):
            replace_model(model, dynamic_quantize(self, proto, per_channel=self.config.per_channel,
                                                  exclude=self.config.exclude_nodes))
            self.record(method="dynamic")
            return ir.passes.PassResult(model, modified=True)
        require_format(self.ctx, INT8_QDQ, self.name)
        if self.config.keep_float < 0:
            raise ConfigError(f"pass {self.name!r}: keep_float must be 0 or more, not {self.config.keep_float}")
        if not self.config.concat_range_ratio >= 1:
            raise ConfigError(f"pass {self.name!r}: concat_range_ratio must be 1 or more (inf: off), "
                              f"not {self.config.concat_range_ratio}")
        feeds = checked_feeds(proto, self.ctx.calibration, self.config.samples, self.name)
        check_finite_outputs(proto, feeds, self.name)
        if self.config.per_channel:
            proto, old = ensure_opset(proto, PER_CHANNEL_OPSET, "per-channel int8 weights")
            if old is not None:
                self.record(opset_upgraded=f"{old} -> {PER_CHANNEL_OPSET}")
        with workdir() as folder:
            quantized = self._static(proto, feeds, folder)
        if quantized is proto:  # fp32 won the placement race
            return ir.passes.PassResult(model, modified=False)
        self._explain(quantized, proto)
        replace_model(model, quantized)
        return ir.passes.PassResult(model, modified=True)

    def _use_dynamic(self, proto: onnx.ModelProto) -> bool:
        method = self.config.method
        if method == "dynamic":
            return True
        if method == "static" or has_op(proto, "Conv", "ConvTranspose"):
            return False
        transformer = has_op(proto, "MatMul", "Attention")
        if transformer and INT8_DYNAMIC not in self.ctx.target.quantization_formats:
            self.skip("method", f"dynamic int8 suits this MatMul graph but {self.ctx.target.name} "
                                "does not run it; static QDQ used")
            return False
        return transformer

    def _options(self) -> static.StaticOptions:
        act: str = self.config.activation_dtype
        act = self.ctx.target.activation_dtype if act == "target" else act
        if act not in static.ACTIVATION_TYPES:
            raise ConfigError(f"pass {self.name!r}: activation dtype {act!r} is not uint8 or int8")
        return static.StaticOptions(self.config.calibration, self.config.per_channel, act)

    def _static(self, proto: onnx.ModelProto, feeds: list, folder: Path) -> onnx.ModelProto:
        src, pre, cache = folder / "fp32.onnx", folder / "pre.onnx", folder / "ranges.json"
        onnx.save(proto, str(src))
        skipped = static.preprocess(src, pre)
        if skipped:
            self.skip("preprocess", f"ORT's symbolic shape inference failed ({skipped}); quantized without it")
        pre_proto = self._rewrite(onnx.load(str(pre)))
        onnx.save(pre_proto, str(pre))
        opts = self._options()
        counter = iter(range(10**6))
        frozen = [*self._keep_bodies_float(pre_proto), *self._keep_mixed_concats_float(pre_proto, feeds)]

        def build(exclude: list[str], only: list[str] | None = None) -> onnx.ModelProto:
            out = folder / f"q{next(counter)}.onnx"
            quantized = static.quantize(pre, out, feeds, opts, cache=cache, exclude=[*frozen, *exclude], only=only)
            return int8ops.integer_hardsigmoid(quantized)[0] if self.config.int8_rewrites else quantized

        self.record(method="static", calibration=opts.calibration, activation_dtype=opts.activation_dtype,
                    per_channel=opts.per_channel, samples=len(feeds))
        placed = self._placement(pre_proto, proto, feeds, build)
        if placed is None:
            return proto
        base_exclude = [*self.config.exclude_nodes, *placed]
        self.record(kept_float=len(base_exclude))
        if self.config.max_drop is None and not self.config.sensitivity_plot and not self.config.keep_float:
            return build(base_exclude)
        return self._recover(pre_proto, proto, feeds, build, base_exclude)

    def _keep_bodies_float(self, pre: onnx.ModelProto) -> list[str]:
        """Note each If/Loop/Scan body left float and return the Relu/Clip nodes to exclude from quantization.

        ORT's QDQ quantizer leaves the bodies float; excluding those nodes keeps the outer values the bodies
        read as they are (see _quant_subgraphs).
        """
        frozen = subgraphs.frozen_for_qdq(pre.graph)
        for owner in subgraphs.body_owners(pre.graph):
            captured = sorted(subgraphs.outer_reads(owner) - {t.name for t in pre.graph.initializer})
            kept = [node for node, value in frozen.items() if value in captured]
            reads = f"; it reads {', '.join(captured)} from the outer graph" if captured else ""
            keeps = f" (kept float for it: {', '.join(kept)})" if kept else ""
            self.skip(subgraphs.owner_label(owner),
                      f"body left float: ORT's static int8 quantizer does not enter If/Loop/Scan bodies{reads}{keeps}")
        if frozen:
            self.record(kept_float_for_subgraphs=sorted(frozen))
        return sorted(frozen)

    def _keep_mixed_concats_float(self, pre: onnx.ModelProto, feeds: list) -> list[str]:
        """Note each Concat whose inputs' ranges differ too much for one scale; return it and the nodes after it.

        ORT quantizes a Concat's output on one scale (see concat_ranges); left float, each input keeps its own.
        """
        limit = self.config.concat_range_ratio
        mixed = concat_ranges.mixed_range_concats(pre, feeds, limit)
        for concat in mixed:
            spans = ", ".join(f"{name} {span:.3g}" for name, span in concat.spans.items())
            after = f"; the {len(concat.downstream)} nodes after it too" if concat.downstream else ""
            self.skip(concat.node, f"Concat kept float: its inputs' ranges differ {concat.ratio:.3g}x (over "
                                   f"{limit:g}x; spans {spans}), too much for one int8 scale{after}")
        if mixed:
            self.record(float_concats=[{"node": c.node, "range_ratio": round(c.ratio, 2),
                                        "spans": {k: round(v, 4) for k, v in c.spans.items()},
                                        "kept_float_after": len(c.downstream)} for c in mixed])
        return sorted({name for c in mixed for name in (c.node, *c.downstream)})

    def _rewrite(self, pre: onnx.ModelProto) -> onnx.ModelProto:
        """Exact float rewrites so that ORT finds int8 kernels for every op (see _quant_int8ops, _quant_pad)."""
        name_nodes(pre)
        if not self.config.int8_rewrites:
            return pre
        quick_gelu = "QuickGelu" in self.ctx.target.execution_providers[0].contrib_ops
        pre, counts = int8ops.prepare_float(pre, quick_gelu=quick_gelu)
        pre, notes = pad_depthwise(pre, self.ctx.target.channel_multiple)
        int8ops.declare_contrib_outputs(pre)  # after padding, which drops the inferred shapes
        padded = {k: v for k, v in notes.items() if "->" in v}
        for node, note in notes.items():
            if node not in padded:
                self.skip(node, f"depthwise width not padded: {note}")
        self.record(rewritten_for_int8=counts, depthwise_padded=padded)
        return pre

    def _placement(self, pre: onnx.ModelProto, fp32: onnx.ModelProto, feeds: list, build) -> list[str] | None:
        """Names to leave float, or None when fp32 itself beat every int8 placement on this host."""
        choice = self.config.placement
        if choice != "auto":
            candidates = static.placement_candidates(pre)
            if choice not in candidates:
                self.skip("placement", f"{choice!r} has nothing to leave in float in this model; 'all' used")
                return []
            return candidates[choice]
        if not self.ctx.target.host_measurable:
            return []
        candidates = {"all": [], **placement.prefix_candidates(pre)}
        models = {name: build(excl).SerializeToString() for name, excl in candidates.items()}
        try:
            best, ratios = placement.fastest(models, fp32.SerializeToString(), feeds[0])
        except Exception as exc:  # noqa: BLE001 - ORT's run errors have several types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CalibrationError(f"{self.name}: ONNX Runtime cannot run the int8 model on the calibration data "
                                   f"({reason}); extreme values in the data give ranges int8 cannot compute "
                                   "with") from exc
        if best != "float":
            best = self._settle_tie(models, ratios, fp32, feeds)
        self.record(placement=best, placement_latency_ratio={k: round(v, 3) for k, v in ratios.items()})
        if best == "float":
            self.skip("placement", f"no int8 placement beat fp32 on this host (best int8: "
                                   f"{min(v for k, v in ratios.items() if k != 'float'):.2f}x); kept float")
            return None
        return candidates[best]

    def _settle_tie(self, models: dict[str, bytes], ratios: dict[str, float], fp32: onnx.ModelProto,
                    feeds: list) -> str:
        """The most accurate of the int8 placements that timed as fast as the fastest (see _quant_placement)."""
        tied = placement.near_fastest(ratios)
        if len(tied) == 1:
            return tied[0]
        reference = sens.outputs_on(fp32, feeds)
        errors = {k: sens.output_error(reference, onnx.load_from_string(models[k]), feeds) for k in tied}
        self.record(placement_tie_error={k: round(v, 5) for k, v in errors.items()})
        return placement.settle_tie(ratios, errors)

    def _recover(self, pre: onnx.ModelProto, fp32: onnx.ModelProto, feeds: list, build,
                 base_exclude: list[str]) -> onnx.ModelProto:
        full = build(base_exclude)  # first: calibrates every tensor the later subsets need
        unit, drop_of = sens.metric_drop(self.ctx, fp32, feeds)
        reference = sens.outputs_on(fp32, feeds)
        names = [n.name for n in pre.graph.node if n.op_type in sens.WEIGHTED_OPS and n.name not in base_exclude]
        ranked = sens.rank(lambda n: build(base_exclude, only=[n]), names,
                           lambda p: sens.output_error(reference, p, feeds))
        self.record(sensitivity=[{"node": n, "error": round(e, 6)} for n, e in ranked[:20]])
        if self.config.sensitivity_plot:
            sens.plot_ranking(ranked, Path(self.config.sensitivity_plot), f"int8 sensitivity ({self.name})")
        if self.config.keep_float:
            most_sensitive = [n for n, _ in ranked[:self.config.keep_float]]
            self.record(kept_float_by_sensitivity=most_sensitive)
            base_exclude = [*base_exclude, *most_sensitive]
            full = build(base_exclude)
            ranked = ranked[self.config.keep_float:]
        if self.config.max_drop is None:
            return full
        result = sens.recover(lambda kept: build(base_exclude + kept), ranked, drop_of,
                              self.config.max_drop, self.config.max_recovery_steps)
        self.record(recovery_unit=unit, recovery_drop=round(result.drop, 6), recovery_met=result.met,
                    recovery_kept_float=result.kept_float, recovery_steps=result.steps)
        if not result.met:
            self.skip("max_drop", f"no configuration within {self.config.max_recovery_steps} float nodes met "
                                  f"max_drop={self.config.max_drop} ({unit}); kept the smallest drop {result.drop:.4g}")
        return result.model

    def _explain(self, quantized: onnx.ModelProto, fp32: onnx.ModelProto) -> None:
        if not self.ctx.target.host_measurable:
            return
        try:
            report = explain(quantized.SerializeToString(), fp32)
        except Exception as exc:  # noqa: BLE001 - ORT's load errors are plain Exception subclasses
            # ORT's quantizer wrote what ORT itself cannot load (float16 scales on QLinearConcat, a
            # QuantizeLinear at an opset ORT has no kernel for): a refusal naming the node ORT names.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedOpError(f"quantize-int8: ONNX Runtime cannot load the quantized model ({reason})") from exc
        self.record(why_not_faster=report.to_json())
