"""quantize-dynamic: int8 weights with activations quantized at run time, for MatMul-heavy transformers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import onnx
import onnx_ir as ir
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.quant.attention import unpack_attention
from edgec.passes.quant.common import INT8_DYNAMIC, has_onnx_domain, has_op, replace_model, require_format, workdir
from edgec.passes.quant.subgraphs import walk
from edgec.targets.profile import TargetProfile

# ORT's dynamic int8 has kernels for these (MatMulIntegerToFloat, DynamicQuantizeMatMul, QAttention);
# Gather covers constant embedding tables (int8 rows, dequantized after the lookup): a quarter of the
# size at no measured cost (MiniLM mean cosine 0.9939 -> 0.9936, same latency).
DYNAMIC_OPS = ("MatMul", "Attention", "Gather")
# Dynamic Conv becomes ConvInteger: several times slower than fp32 on ORT's CPU EP (bench/RESULTS.md,
# Quantization: ORT dynamic). It is never quantized here.
REFUSED_OPS = ("Conv", "ConvTranspose")


def matmul_graph(proto: onnx.ModelProto) -> bool:
    """A Conv-free graph with MatMul or Attention (a transformer): where dynamic int8 beats static QDQ."""
    return not has_op(proto, *REFUSED_OPS) and has_op(proto, "MatMul", "Attention")


def dynamic_quantize(pass_: EdgecPass[Any], proto: onnx.ModelProto, per_channel: bool,
                     exclude: Sequence[str] = ()) -> onnx.ModelProto:
    """quantize_dynamic on MatMul/Attention/Gather nodes not in ``exclude``, inside If/Loop/Scan bodies too.

    ORT turns Gemms with a constant weight into MatMul + Add and quantizes those; Conv is left float
    with a note each, as is any Gemm it kept.
    """
    require_format(pass_.ctx, INT8_DYNAMIC, pass_.name)
    if not has_onnx_domain(proto):
        # ORT's quantizer needs the ONNX domain (it raises "Failed to find proper ai.onnx domain"), and a
        # model without it (ai.onnx.ml only) has no MatMul, Attention or Gather to quantize anyway.
        pass_.skip("model", "no ONNX-domain ops (ai.onnx.ml only): nothing to quantize")
        return proto
    for path, _, node, _ in walk(proto.graph):
        if node.op_type in REFUSED_OPS:
            pass_.skip(path, "dynamic int8 Conv becomes ConvInteger, slower than fp32; use quantize-int8")
    gemms = {path for path, _, node, _ in walk(proto.graph) if node.op_type == "Gemm"}
    proto = _unpack(pass_, proto)
    exclude = [*exclude, *_standard_attention(pass_, proto)]
    with workdir() as folder:
        src, out = folder / "fp32.onnx", folder / "int8.onnx"
        onnx.save(proto, str(src))
        # Graphs with contrib ops (fused Attention, SkipLayerNorm) defeat ORT's type inference for
        # some weights; DefaultTensorType tells it they are float, as its error message suggests.
        # EnableSubgraph: quantize MatMuls in If/Loop/Scan bodies too (their outer weights included).
        quantize_dynamic(str(src), str(out), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "EnableSubgraph": True})
        quantized = onnx.load(str(out))
    after = {path: node.op_type for path, _, node, _ in walk(quantized.graph)}
    for path in sorted(gemms):
        if after.get(path) == "Gemm":
            pass_.skip(path, "ORT has no dynamic int8 Gemm kernel; left float")
    quantizers = [p for p, op in after.items() if op in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul")]
    pass_.record(dynamic_quantizers=len(quantizers), per_channel=per_channel,
                 in_subgraphs=sum("/" in p for p in quantizers))
    return quantized


def _standard_attention(pass_: EdgecPass[Any], proto: onnx.ModelProto) -> list[str]:
    """Names of ONNX-domain Attention nodes (opset 23), named if they were not, to keep out of ORT's quantizer.

    ORT's quantizer keys its op registry by op type alone: it would rewrite an ONNX Attention as the
    contrib QAttention, whose inputs are another op's, and write an invalid model.
    """
    names = []
    for index, (path, _, node, _) in enumerate(walk(proto.graph)):
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            node.name = node.name or f"Attention_{index}_edgec"
            names.append(node.name)
            pass_.skip(path or node.name, "ONNX Attention (opset 23) has no int8 kernel in ORT; kept float")
    return names


def _unpack(pass_: EdgecPass[Any], proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fused Attention -> MatMul + MultiHeadAttention, so the QKV weights get int8 too (see _quant_attention)."""
    if not any(n.op_type == "Attention" for n in proto.graph.node):
        return proto
    if "MultiHeadAttention" not in pass_.ctx.target.contrib_ops:
        pass_.skip("Attention", f"target {pass_.ctx.target.name} has no MultiHeadAttention; fused Attention "
                                "kept float")
        return proto
    proto, count, left = unpack_attention(proto)
    for node, why in left.items():
        pass_.skip(node, f"fused Attention kept float: {why}")
    if count:
        pass_.record(attention_unpacked=count)
    return proto


@dataclasses.dataclass(frozen=True)
class QuantizeDynamicConfig:
    """Options of quantize-dynamic. Per-channel weights keep MiniLM at cosine 0.995 (per-tensor: 0.97)."""

    per_channel: bool = True


@register_pass("quantize-dynamic")
class QuantizeDynamicPass(EdgecPass[QuantizeDynamicConfig]):
    """Quantize MatMul and fused Attention weights to int8; activations are quantized at run time.

    Applies to transformer graphs (best after ``fuse``), If/Loop/Scan bodies included. Never quantizes
    Conv (ConvInteger is slower than fp32; each Conv gets a skip note). ORT rewrites Gemms with a constant
    weight into MatMul + Add and quantizes those; a Gemm it keeps gets a note. Needs no calibration data.
    """

    config_cls = QuantizeDynamicConfig
    tolerance = Tolerance(lossy=True, min_cosine=0.9)
    search_space = {"per_channel": Knob((True, False))}
    precision = "int8-dynamic"

    @classmethod
    def precision_pass(cls, proto: onnx.ModelProto, target: TargetProfile) -> type[EdgecPass[Any]] | None:
        """Itself for MatMul graphs on targets that run dynamic int8; none for Conv nets (``REFUSED_OPS``)."""
        return cls if matmul_graph(proto) and INT8_DYNAMIC in target.quantization_formats else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Quantize the model's MatMul/Attention weights dynamically, in place."""
        proto = to_proto(model)
        quantized = dynamic_quantize(self, proto, self.config.per_channel)
        replace_model(model, quantized)
        return ir.passes.PassResult(model, modified=True)
