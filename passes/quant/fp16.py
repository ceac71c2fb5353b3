"""fp16: float16 weights and compute with float32 graph I/O, for GPU targets (onnxconverter-common style)."""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir
from onnxruntime.transformers.float16 import convert_float_to_float16

from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Tolerance, register_pass
from edgec.passes.quant.common import FP16, replace_model, require_dtype

# Ops whose float16 versions lose range or have no fp16 kernel on common EPs; kept in float32.
DEFAULT_KEEP_OPS = ("Resize", "Range", "CumSum", "TopK", "NonMaxSuppression", "RandomNormalLike",
                    "RandomUniformLike", "Upsample", "SoftmaxCrossEntropyLoss", "ReduceL2", "LayerNormalization",
                    "SkipLayerNormalization", "EmbedLayerNormalization")


@dataclasses.dataclass(frozen=True)
class Fp16Config:
    """Options of fp16: ops and nodes kept in float32 besides the default keep-list."""

    keep_ops: tuple[str, ...] = ()
    keep_nodes: tuple[str, ...] = ()


@register_pass("fp16")
class Fp16Pass(EdgecPass[Fp16Config]):
    """Convert float32 weights and ops to float16; graph inputs/outputs stay float32 (Casts at the edges).

    Uses the converter ORT ships (onnxruntime.transformers.float16, onnxconverter-common's code).
    For GPU targets; on a target whose formats lack fp16 but whose EPs run float16 (CPU), it
    converts and leaves a warning: on ORT's CPU EP fp16 is slower on
    the CNNs and within about 8% of fp32 on the transformers (bench/RESULTS.md, Quantization).
    Ops in the keep-list and ``keep_ops``/``keep_nodes`` stay float32.
    """

    config_cls = Fp16Config
    # fp16 keeps cosine > 0.99999 on the zoo; 0.99 still catches overflow to inf/NaN.
    tolerance = Tolerance(lossy=True, min_cosine=0.99)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Convert the model to float16 in place, the keep-lists excepted."""
        require_dtype(self.ctx, "float16", self.name)
        if FP16 not in self.ctx.target.quantization_formats:
            self.skip("target", f"{self.ctx.target.name} does not prefer fp16: its CPU kernels are not faster "
                                "in float16; expect no speed gain")
        proto = to_proto(model)
        keep = sorted({*DEFAULT_KEEP_OPS, *self.config.keep_ops})
        converted = convert_float_to_float16(proto, keep_io_types=True, op_block_list=keep,
                                             node_block_list=list(self.config.keep_nodes))
        _drop_initializer_value_info(converted.graph)
        self.record(kept_ops=[op for op in keep if any(n.op_type == op for n in proto.graph.node)])
        replace_model(model, converted)
        return ir.passes.PassResult(model, modified=True)


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """Remove value_info entries that describe initializers.

    The converter declares every float initializer float16 in value_info, including ones that no
    converted node reads, which it leaves float32. The checker then sees two types for one value.
    An initializer's type is its own, so these entries are never needed.
    """
    names = {t.name for t in graph.initializer}
    kept = [vi for vi in graph.value_info if vi.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
