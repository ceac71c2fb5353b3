"""Keep mobile-CNN activations in int8: rewrite the ops ORT has no QDQ fusion for into ones it has.

ORT's CPU EP fuses DQ -> op -> Q into an int8 kernel for Conv, Add, Mul, Sigmoid, GlobalAveragePool
(QLinearConv, QLinearAdd, QLinearMul, QLinearSigmoid, QLinearGlobalAveragePool...), but not for
HardSwish, HardSigmoid or ReduceMean. Those stay float between a DQ and a Q, and since ORT's int8
convs run NHWC and float ops NCHW, each one also costs a pair of Transposes: MobileNetV3 and
EfficientNet gained nothing from int8. Two steps, both exact up to int8 rounding:

  - before quantization (float): ReduceMean over H,W -> GlobalAveragePool (exact);
    HardSwish(x) -> x * HardSigmoid(x) (exact), so the product becomes a QLinearMul;
    SiLU x * Sigmoid(x) -> com.microsoft QuickGelu(x, alpha=1) (exact), where the target's first EP
    runs QuickGelu. This one goes the other way: it keeps SiLU in float, because ORT's int8 SiLU
    is two passes of scalar code (QLinearSigmoid's lookup table, then QLinearMul) and timed slower
    than DQ -> QuickGelu (one vectorized pass) -> Q on a 96x112x112 tensor.
    ORT moves its NHWC Transposes through DQ, QuickGelu and Q, so no layout change is added.
    EfficientNet-B0 int8 got faster with it (bench/RESULTS.md, Quantization);
  - after quantization (QDQ): DQ -> HardSigmoid -> Q becomes DQ -> Add(beta/alpha) -> Q, whose
    saturation does the clip, and the consumers' DQ scale takes the factor alpha:
    clip(alpha*x + beta, 0, 1) = alpha * clip(x + beta/alpha, 0, 1/alpha). QLinearAdd then runs it.

Hand-written because neither ORT's quantizer nor onnxscript's rewriter knows these identities.
"""

from __future__ import annotations

import collections
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.passes.ir_utils import proto_attribute
from edgec.passes.quant.common import consumers

logger = logging.getLogger(__name__)

QRANGE: dict[int, tuple[int, int]] = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}
MS_DOMAIN = "com.microsoft"
FLOAT_CONTRIB_OPS = frozenset({"QuickGelu"})


def _reduce_axes(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        axes = constants.get(node.input[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return proto_attribute(node, "axes")


def _rank(proto: onnx.ModelProto, name: str) -> int | None:
    infos = [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    info = next((v for v in infos if v.name == name), None)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _spatial_mean(node: onnx.NodeProto, constants: dict, proto: onnx.ModelProto) -> list[onnx.NodeProto] | None:
    """GlobalAveragePool (+ Flatten when keepdims=0) for a ReduceMean over the last two axes of a 4-D tensor."""
    axes = _reduce_axes(node, constants)
    if axes is None or _rank(proto, node.input[0]) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
        return None
    if proto_attribute(node, "keepdims", 1):
        return [helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), node.name)]
    pooled = f"{node.output[0]}/pooled"
    return [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], node.name),
            helper.make_node("Flatten", [pooled], list(node.output), f"{node.name}/Flatten", axis=1)]


def _silu_gates(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """``{Mul name: its Sigmoid}`` for each Mul(x, Sigmoid(x)) whose Sigmoid feeds nothing else."""
    users = consumers(graph)
    sigmoids = {n.output[0]: n for n in graph.node if n.op_type == "Sigmoid" and n.domain in ("", "ai.onnx")}
    gates = {}
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for gate, other in (node.input, reversed(node.input)):
            sigmoid = sigmoids.get(gate)
            if sigmoid is not None and sigmoid.input[0] == other and len(users[gate]) == 1:
                gates[node.name] = sigmoid
                break
    return gates


def _float_rewrite(node: onnx.NodeProto, constants: dict, proto: onnx.ModelProto,
                   silu: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """The nodes replacing ``node`` (see module doc), or None to keep it."""
    if node.name in silu:
        return [helper.make_node("QuickGelu", [silu[node.name].input[0]], list(node.output), node.name,
                                 domain=MS_DOMAIN, alpha=1.0)]
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "ReduceMean":
        return _spatial_mean(node, constants, proto)
    if node.op_type == "HardSwish":
        gate = f"{node.output[0]}/gate"
        return [helper.make_node("HardSigmoid", [node.input[0]], [gate], f"{node.name}/HardSigmoid",
                                 alpha=1.0 / 6.0, beta=0.5),
                helper.make_node("Mul", [node.input[0], gate], list(node.output), node.name)]
    return None


def prepare_float(proto: onnx.ModelProto, quick_gelu: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The float rewrites (see module doc); ``proto`` should carry inferred shapes and named nodes.

    ``quick_gelu``: fold SiLU into com.microsoft QuickGelu (only where the target runs it).
    Returns the model and counts by rewritten op ("SiLU" for the folded pairs).
    """
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    counts: collections.Counter[str] = collections.Counter()
    silu = _silu_gates(proto.graph) if quick_gelu else {}
    folded = {s.output[0] for s in silu.values()}  # the Sigmoids that QuickGelu absorbs
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "Sigmoid" and node.output[0] in folded:
            continue
        new = _float_rewrite(node, constants, proto, silu)
        if new is None:
            nodes.append(node)
        else:
            counts["SiLU" if node.name in silu else node.op_type] += 1
            nodes.extend(new)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if silu and not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return proto, dict(counts)


def declare_contrib_outputs(proto: onnx.ModelProto) -> None:
    """Give outputs of com.microsoft float ops a float value_info when they have none.

    onnx's shape inference does not know contrib ops, and ORT's quantizer only calibrates and
    quantizes tensors whose type it knows: without this, a QuickGelu output would stay unquantized
    and the int8 conv reading it would fail to get a bias scale.
    """
    known = {v.name for v in [*proto.graph.value_info, *proto.graph.output]}
    for node in proto.graph.node:
        if node.domain == MS_DOMAIN and node.op_type in FLOAT_CONTRIB_OPS:
            for name in node.output:
                if name and name not in known:
                    proto.graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))


def _scalar(graph: onnx.GraphProto, array: np.ndarray, name: str) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _integer_hardsigmoid(graph: onnx.GraphProto, node: onnx.NodeProto, quant: onnx.NodeProto,
                         users: list[onnx.NodeProto], dtype: int) -> list[onnx.NodeProto]:
    """Nodes replacing ``node`` -> ``quant``; edits the DQ ``users`` of the quantized output in place."""
    alpha, beta = float(proto_attribute(node, "alpha", 0.2)), float(proto_attribute(node, "beta", 0.5))
    lo, hi = QRANGE[dtype]
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    tag = node.name or node.output[0]
    shift = beta / alpha
    # the constant shift as an int8 tensor with its own DQ, so that the Add is a QLinearAdd
    c_q = _scalar(graph, np.array(hi if shift >= 0 else lo, np_type), f"{tag}/shift_q")
    c_s = _scalar(graph, np.array(abs(shift) / (hi if shift >= 0 else -lo), np.float32), f"{tag}/shift_scale")
    c_z = _scalar(graph, np.array(0, np_type), f"{tag}/shift_zero")
    zero = _scalar(graph, np.array(lo, np_type), f"{tag}/zero")
    q_scale = _scalar(graph, np.array(1.0 / alpha / (hi - lo), np.float32), f"{tag}/clip_scale")
    dq_scale = _scalar(graph, np.array(1.0 / (hi - lo), np.float32), f"{tag}/gate_scale")
    for dq in users:
        dq.input[1], dq.input[2] = dq_scale, zero
    shifted, shift_f = f"{tag}/shifted", f"{tag}/shift"
    return [helper.make_node("DequantizeLinear", [c_q, c_s, c_z], [shift_f], f"{tag}/shift_dq"),
            helper.make_node("Add", [node.input[0], shift_f], [shifted], f"{tag}/Add"),
            helper.make_node("QuantizeLinear", [shifted, q_scale, zero], list(quant.output), quant.name)]


def integer_hardsigmoid(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """DQ -> HardSigmoid -> Q groups to DQ -> Add -> Q (see module doc). Returns (model, how many)."""
    graph = proto.graph
    users = consumers(graph)
    producers = {out: n for n in graph.node for out in n.output}
    initializers = {t.name: t for t in graph.initializer}
    replaced: dict[str, list[onnx.NodeProto]] = {}
    dropped: set[str] = set()  # outputs of the Q nodes that the replacements re-create
    for node in graph.node:
        if node.op_type != "HardSigmoid" or float(proto_attribute(node, "alpha", 0.2)) <= 0:
            continue
        source, after = producers.get(node.input[0]), users.get(node.output[0], [])
        if source is None or source.op_type != "DequantizeLinear" or len(after) != 1:
            continue
        quant = after[0]
        outs = users.get(quant.output[0], [])
        zp = initializers.get(quant.input[2]) if len(quant.input) > 2 else None
        if quant.op_type != "QuantizeLinear" or zp is None or zp.data_type not in QRANGE or \
                not outs or any(u.op_type != "DequantizeLinear" for u in outs):
            continue
        replaced[node.name or node.output[0]] = _integer_hardsigmoid(graph, node, quant, outs, zp.data_type)
        dropped.add(quant.output[0])
    nodes = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] in dropped:
            continue
        nodes.extend(replaced.get(node.name or node.output[0], [node]) if node.op_type == "HardSigmoid" else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    return proto, len(replaced)
