"""fp8: float8 (E4M3FN or E5M2) weights with per-channel scales, as DequantizeLinear (opset 19)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import onnx_ir as ir

from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.quant.common import FP8, ensure_opset, replace_model, require_dtype, require_format
from edgec.passes.quant.lowbit import add_fp8_weights

FP8_OPSET = 19  # float8 types in QuantizeLinear/DequantizeLinear
DTYPE_NAMES = {"e4m3fn": "float8e4m3fn", "e5m2": "float8e5m2"}


@dataclasses.dataclass(frozen=True)
class Fp8Config:
    """Options of fp8. E4M3FN (more mantissa) suits weights; E5M2 (more range) is offered for completeness."""

    format: Literal["e4m3fn", "e5m2"] = "e4m3fn"
    exclude_nodes: tuple[str, ...] = ()


@register_pass("fp8")
class Fp8Pass(EdgecPass[Fp8Config]):
    """Store Conv/Gemm/MatMul weights in float8 with one float32 scale per output channel.

    Nodes inside If/Loop/Scan bodies are converted too (their DequantizeLinear goes into the body); an
    outer weight that only a body reads is kept, converted, in the outer graph.
    For cuda/tensorrt targets (their quantization formats list fp8-qdq). Each weight gets a
    DequantizeLinear; ORT's CPU EP emulates it, so accuracy is measured on the host. Activations and
    graph I/O stay float32. Opsets below 19 are upgraded (recorded).
    """

    config_cls = Fp8Config
    # E4M3 weights: cosine ~0.999; E5M2 ~0.99. Below 0.9 the encoding is broken, not merely coarse.
    tolerance = Tolerance(lossy=True, min_cosine=0.9)
    search_space = {"format": Knob(("e4m3fn", "e5m2"))}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Store the weights in float8 in place (opset upgraded when needed)."""
        require_format(self.ctx, FP8, self.name)
        require_dtype(self.ctx, DTYPE_NAMES[self.config.format], self.name)
        proto, old = ensure_opset(to_proto(model), FP8_OPSET, "float8 DequantizeLinear")
        if old is not None:
            self.record(opset_upgraded=f"{old} -> {FP8_OPSET}")
        count = add_fp8_weights(proto, self.config.format, set(self.config.exclude_nodes))
        self.record(format=self.config.format, weights=count)
        replace_model(model, proto)
        return ir.passes.PassResult(model, modified=count > 0)
