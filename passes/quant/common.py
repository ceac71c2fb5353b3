"""Shared plumbing of the quantization passes: target format checks, opset upgrades, model swaps."""

from __future__ import annotations

import collections
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
import onnx_ir.passes.common

from edgec.core.errors import PrecisionError, UnsupportedOpError
from edgec.core.ir import to_ir
from edgec.passes.context import BuildContext

logger = logging.getLogger(__name__)

# Names in TargetProfile.quantization_formats.
INT8_QDQ = "int8-qdq"
INT8_DYNAMIC = "int8-dynamic"
INT4 = "int4-matmulnbits"
FP16 = "fp16"
FP8 = "fp8-qdq"


def require_format(ctx: BuildContext, fmt: str, pass_name: str) -> None:
    """Refuse a precision the target does not list in ``quantization_formats``."""
    formats = ctx.target.quantization_formats
    if fmt not in formats:
        raise PrecisionError(f"pass {pass_name!r}: target {ctx.target.name} does not run {fmt} "
                             f"(its quantization formats: {', '.join(formats) or 'none'})")


def require_dtype(ctx: BuildContext, dtype: str, pass_name: str) -> None:
    """Refuse a tensor dtype that no execution provider of the target runs."""
    if not any(dtype in ep.dtypes for ep in ctx.target.execution_providers):
        raise PrecisionError(f"pass {pass_name!r}: no execution provider of target {ctx.target.name} "
                             f"runs {dtype}")


# Ops whose constant inputs (weights, biases) the int8 quantizers turn into integers with a scale.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def nonfinite_weight(model: ir.Model) -> str | None:
    """The first constant input of a WEIGHTED_OPS node of the main graph holding NaN or infinity, in words."""
    for node in model.graph:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for value in node.inputs:
            if value is None:
                continue
            tensor = value.const_value
            if tensor is None or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
                continue
            if not np.isfinite(tensor.numpy()).all():
                return (f"weight {value.name!r} of node {node.name!r} holds NaN or infinite values, which no "
                        "integer with a scale represents")
    return None


def has_onnx_domain(proto: onnx.ModelProto) -> bool:
    """Whether the model imports the ONNX domain (an ai.onnx.ml-only model has nothing to quantize)."""
    return any(o.domain in ("", "ai.onnx") for o in proto.opset_import)


def opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset of a model."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def ensure_opset(proto: onnx.ModelProto, minimum: int, why: str) -> tuple[onnx.ModelProto, int | None]:
    """Upgrade the default-domain opset to ``minimum`` if lower; returns (model, old opset or None).

    Per-channel DequantizeLinear needs opset 13 (``axis``), float8 Q/DQ opset 19, blocked Q/DQ 21.
    """
    old = opset_of(proto)
    if old >= minimum:
        return proto, None
    try:
        upgraded = onnx.version_converter.convert_version(proto, minimum)
    except Exception as exc:  # the converter raises bare RuntimeError/ValueError per adapter
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedOpError(f"opset {old} model cannot be upgraded to {minimum} for {why}: {first}") from exc
    logger.info("upgraded opset %d -> %d for %s", old, minimum, why)
    return upgraded, old


def replace_model(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Make ``model`` (the pass's in-place argument) hold ``proto``'s graph, opsets and functions."""
    # ORT's quantizers emit com.microsoft nodes without always declaring the domain.
    declared = {o.domain for o in proto.opset_import}
    for domain in sorted({n.domain for n in proto.graph.node} - declared - {"", "ai.onnx"}):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    new = to_ir(proto)
    # fp16's converter appends its I/O Casts at the end of the node list; the checker wants order.
    ir.passes.common.TopologicalSortPass()(new)
    _keep_declared_io_shapes(model.graph, new.graph)
    model.graph = new.graph
    model.ir_version = new.ir_version
    model.functions.clear()
    model.functions.update(new.functions)


def _keep_declared_io_shapes(before: ir.Graph, after: ir.Graph) -> None:
    """Graph inputs and outputs keep the shapes they were declared with when a tool's rewrite dropped them.

    ORT's quantization preprocessing rewrites an output whose shape only data decides (a MelWeightMatrix of
    its inputs' values) without any shape; the checker then rejects the model.
    """
    declared = {v.name: v.shape for v in [*before.inputs, *before.outputs] if v.shape is not None}
    for value in [*after.inputs, *after.outputs]:
        if value.shape is None and value.name in declared:
            value.shape = declared[value.name]


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A private temporary folder for ORT's file-based tools (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="edgec-quant-") as folder:
        yield Path(folder)


def has_op(proto: onnx.ModelProto, *op_types: str) -> bool:
    """Whether the main graph has a node of one of ``op_types``."""
    return any(n.op_type in op_types for n in proto.graph.node)


def name_nodes(proto: onnx.ModelProto) -> int:
    """Give every unnamed or duplicate-named main-graph node a unique name; returns how many were renamed.

    ORT's quantizers take node names (nodes_to_exclude) and edgec's rewrites key nodes by name;
    exporters inline functions into nameless nodes.
    """
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}_edgec"
            renamed += 1
        seen.add(node.name)
    return renamed


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each value of ``graph``, by value name."""
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users
