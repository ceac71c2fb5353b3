"""Unpack fused com.microsoft Attention into MatMul + MultiHeadAttention so dynamic int8 reaches its QKV weights.

ORT's dynamic quantizer maps Attention to QAttention, but its AttentionQuant returns the node
unchanged when it has ``qkv_hidden_sizes`` (which onnxscript's fusion always sets), and QAttention
has no ``attention_bias`` input (where the fused mask lives), so the node would lose its mask. The
QKV projection is most of an encoder layer's weights: left float, bert-like int8 ran slower than ORT's
own quantize_dynamic on the unfused graph (bench/RESULTS.md, Quantization). Written by hand because no
library offers the reverse of the fusion; the result is exact in float (same math, same kernels).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.passes.ir_utils import proto_attribute

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
# Attention attributes MultiHeadAttention understands the same way.
SHARED_ATTRIBUTES = ("num_heads", "mask_filter_value", "scale")
# Attention features MultiHeadAttention lacks or spells differently: nodes using them stay as they are.
UNSUPPORTED_ATTRIBUTES = ("do_rotary", "past_present_share_buffer", "rotary_embedding_dim")
# Attention inputs: 0 input, 1 weight, 2 bias, 3 mask_index, 4 past, 5 attention_bias, 6 past_sequence_length.
MASK_INDEX, PAST, ATTENTION_BIAS = 3, 4, 5
SPLIT_INPUT_OPSET = 13


def _unpackable(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> str | None:
    """Why ``node`` cannot be unpacked (None if it can)."""
    inputs = list(node.input) + [""] * (7 - len(node.input))
    if any(node.output[1:]):
        return "returns present state"
    if inputs[1] not in initializers or inputs[2] not in initializers:
        return "QKV weight or bias is not a constant"
    if inputs[MASK_INDEX] or inputs[PAST] or inputs[6]:
        return "has mask_index or past state"
    if proto_attribute(node, "unidirectional", 0) or any(proto_attribute(node, a) for a in UNSUPPORTED_ATTRIBUTES):
        return "unidirectional or rotary attention"
    sizes = list(proto_attribute(node, "qkv_hidden_sizes", []) or [])
    width = initializers[inputs[1]].dims[-1]
    if sizes and (len(set(sizes)) != 1 or sum(sizes) != width):
        return f"unequal q/k/v sizes {sizes}"
    if width % 3:
        return f"packed QKV width {width} is not divisible by 3"
    return None


def _split(qkv: str, outputs: list[str], width: int, tag: str, opset: int) -> tuple[onnx.NodeProto, list]:
    """An even 3-way Split on the last axis; sizes are an input from opset 13, an attribute before."""
    sizes = np.full(3, width // 3, dtype=np.int64)
    if opset < SPLIT_INPUT_OPSET:
        return helper.make_node("Split", [qkv], outputs, f"{tag}/Split", axis=-1, split=sizes.tolist()), []
    name = f"{tag}/split_sizes"
    node = helper.make_node("Split", [qkv, name], outputs, f"{tag}/Split", axis=-1)
    return node, [numpy_helper.from_array(sizes, name)]


def _replacement(node: onnx.NodeProto, width: int, tag: str, opset: int) -> tuple[list[onnx.NodeProto], list]:
    inputs = list(node.input) + [""] * (6 - len(node.input))
    qkv, q, k, v = (f"{tag}/{s}" for s in ("qkv", "q", "k", "v"))
    attrs = {a: proto_attribute(node, a) for a in SHARED_ATTRIBUTES if proto_attribute(node, a) is not None}
    split, constants = _split(qkv, [q, k, v], width, tag, opset)
    mha_inputs = [q, k, v, inputs[2], "", inputs[ATTENTION_BIAS]]
    while not mha_inputs[-1]:
        mha_inputs.pop()
    return [
        helper.make_node("MatMul", [inputs[0], inputs[1]], [qkv], f"{tag}/MatMul"),
        split,
        helper.make_node("MultiHeadAttention", mha_inputs,
                         [node.output[0]], f"{tag}/MultiHeadAttention", domain=MS_DOMAIN, **attrs),
    ], constants


def unpack_attention(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int, dict[str, str]]:
    """Replace each unpackable Attention; returns (model, how many, {left node: why not})."""
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    nodes, count, left = [], 0, {}
    for index, node in enumerate(graph.node):
        if node.op_type != "Attention" or node.domain != MS_DOMAIN:
            nodes.append(node)
            continue
        why = _unpackable(node, initializers)
        if why:
            left[node.name] = why
            nodes.append(node)
            continue
        tag = node.name or f"attention_{index}"
        replacement, constants = _replacement(node, initializers[node.input[1]].dims[-1], tag, opset)
        nodes.extend(replacement)
        graph.initializer.extend(constants)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return proto, count, left

