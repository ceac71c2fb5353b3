"""mixed-precision: one precision per node (int8 / int4 / fp16 / fp8 / fp32), the search's per-node space."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, cast

import onnx
import onnx_ir as ir

from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.quant import precision
from edgec.passes.quant.common import replace_model, require_dtype
from edgec.passes.quant.fp8 import Fp8Config, Fp8Pass
from edgec.passes.quant.quantize_int4 import QuantizeInt4Config, QuantizeInt4Pass
from edgec.passes.quant.quantize_int8 import QuantizeInt8Config, QuantizeInt8Pass
from edgec.passes.quant.subgraphs import body_owners, owner_label
from edgec.targets.profile import TargetProfile


@dataclasses.dataclass(frozen=True)
class MixedPrecisionConfig:
    """Options of mixed-precision.

    ``precisions`` maps node names to ``int8``, ``int4``, ``fp16``, ``fp8`` or ``fp32``; the other
    Conv/ConvTranspose/Gemm/MatMul nodes take ``default`` where it applies to them (fp32 otherwise,
    with a note). ``calibration`` and ``samples`` are those of the int8 nodes' static ranges.
    """

    precisions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default: str = "int8"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = 8

    def __post_init__(self) -> None:
        precision.check_precision_names(self.precisions, self.default, "mixed-precision")


@register_pass("mixed-precision")
class MixedPrecisionPass(EdgecPass[MixedPrecisionConfig]):
    """Give each weighted node the precision a map names, by running the quantization passes on their nodes.

    Applies the precisions in an order where each step only sees float nodes it owns: int8 first
    (quantize-int8 with every non-int8 node excluded and ``placement = "all"``, so that a rebuild
    is exact: no host timing decides anything), then int4 MatMulNBits and fp8 weights (their passes,
    told to exclude every other node), then fp16 compute (Casts around each node, see
    ``_quant_precision.cast_nodes_to_fp16``). ``node_choices`` lists what each node can take on a
    target: that is the per-node search space (the class-level ``search_space`` only holds the
    default). Nodes inside If/Loop/Scan bodies stay fp32, with a note per body. Graph I/O dtypes are
    never changed. Each step's record is nested under its precision in this pass's record.
    """

    config_cls = MixedPrecisionConfig
    # Same floor as each precision's own pass: a broken step (wrong scales, swapped axes) is far lower.
    tolerance = Tolerance(lossy=True, min_cosine=0.9)
    search_space = {"default": Knob(("int8", "fp32"))}

    @classmethod
    def node_choices(cls, model: ir.Model | onnx.ModelProto, target: TargetProfile) -> dict[str, tuple[str, ...]]:
        """``{node name: precisions target runs for it}``: the per-node search space of ``model``."""
        proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
        return precision.node_choices(proto, target)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Resolve each node's precision and run the quantization steps on their nodes in place."""
        proto = to_proto(model)
        resolved, notes = precision.resolve(proto, self.ctx.target, self.config.precisions, self.config.default,
                                            self.name)
        for node, why in notes.items():
            self.skip(node, why)
        for owner in body_owners(proto.graph):
            self.skip(owner_label(owner), "nodes inside If/Loop/Scan bodies take no per-node precision; kept fp32")
        by_precision: dict[str, set[str]] = collections.defaultdict(set)
        for node, chosen in resolved.items():
            by_precision[chosen].add(node)
        self.record(nodes_by_precision={p: len(by_precision[p]) for p in precision.PRECISIONS if by_precision[p]})
        if by_precision["int8"]:
            # the unlisted nodes (Relu, Add, pools) go int8 with their neighbours only when int8 is the default
            others = {n.name for n in proto.graph.node if n.name not in resolved and self.config.default != "int8"}
            exclude = sorted(others | (set(resolved) - by_precision["int8"]))
            self._step(model, "int8", QuantizeInt8Pass, QuantizeInt8Config(
                calibration=self.config.calibration, samples=self.config.samples, placement="all",
                exclude_nodes=tuple(exclude)))
        for name, pass_cls, config_of in _LATER_STEPS:
            if by_precision[name]:
                # every other node, those in If/Loop/Scan bodies included (the int4 quantizer enters them)
                # a node in a graph always has a name: onnx_ir's name authority gives it one
                rest = tuple(sorted(cast(str, n.name) for n in model.graph.all_nodes()
                                    if n.name not in by_precision[name]))
                self._step(model, name, pass_cls, config_of(rest))
        if by_precision["fp16"]:
            self._fp16(model, by_precision["fp16"])
        modified = any(by_precision[p] for p in precision.PRECISIONS if p != "fp32")
        return ir.passes.PassResult(model, modified=modified)

    def _fp16(self, model: ir.Model, names: set[str]) -> None:
        require_dtype(self.ctx, "float16", self.name)
        proto = to_proto(model)
        self.record(fp16={"nodes": precision.cast_nodes_to_fp16(proto, names)})
        replace_model(model, proto)

    def _step(self, model: ir.Model, name: str, pass_cls: type[EdgecPass[Any]], config: Any) -> None:
        """Run one precision's pass on ``model`` in place; its record goes under ``name`` in this one's."""
        inner = pass_cls(config, self.ctx)
        stats = self.ctx.report.stats
        saved = stats.pop(inner.name, None)  # an earlier pass of that name keeps its own record
        inner.call(model)
        self.record(**{name: stats.pop(inner.name, {})})
        if saved is not None:
            stats[inner.name] = saved


# After int8, each step excludes every node but its own (by name, on the graph as it is then).
_LATER_STEPS = (
    ("int4", QuantizeInt4Pass, lambda rest: QuantizeInt4Config(exclude_nodes=rest)),
    ("fp8", Fp8Pass, lambda rest: Fp8Config(exclude_nodes=rest)),
)
