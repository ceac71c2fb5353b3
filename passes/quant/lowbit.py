"""Weight encoders for fp8 (stored, with DequantizeLinear) and fp4 (simulated) on weighted nodes' initializers.

Written by hand because ORT's quantization tools emit neither float8 E5M2 nor FLOAT4E2M1, and the
ONNX reference evaluator is what checks the rounding.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.passes.ir_utils import proto_attribute
from edgec.passes.quant.subgraphs import drop_unused_initializers as drop_graph_initializers
from edgec.passes.quant.subgraphs import find_initializer, walk

# Which input of each op holds the weight, and the axis of its output channels (per-channel scales).
WEIGHT_INPUT = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, None), "MatMul": (1, -1)}
FP8 = {"e4m3fn": (ml_dtypes.float8_e4m3fn, onnx.TensorProto.FLOAT8E4M3FN, 448.0),
       "e5m2": (ml_dtypes.float8_e5m2, onnx.TensorProto.FLOAT8E5M2, 57344.0)}
FP4_MAX = 6.0  # largest E2M1 magnitude


@dataclasses.dataclass(frozen=True)
class WeightSlot:
    """A weighted node's constant float weight, wherever the node sits (main graph or an If/Loop/Scan body).

    ``graph`` holds the node, ``owner`` the weight (the main graph, for a body reading an outer weight).
    """

    path: str
    graph: onnx.GraphProto
    node: onnx.NodeProto
    index: int
    tensor: onnx.TensorProto
    owner: onnx.GraphProto
    axis: int


def weight_slots(proto: onnx.ModelProto) -> list[WeightSlot]:
    """One slot per weighted node with a constant float weight of rank 2 or more, bodies included."""
    slots = []
    for path, graph, node, scope in walk(proto.graph):
        spec = WEIGHT_INPUT.get(node.op_type)
        if spec is None or node.domain not in ("", "ai.onnx") or len(node.input) <= spec[0]:
            continue
        found = find_initializer(node.input[spec[0]], scope)
        if found is None or found[0].data_type != onnx.TensorProto.FLOAT or len(found[0].dims) < 2:
            continue
        tensor, owner = found
        axis = spec[1]
        if axis is None:  # Gemm: the weight's output axis follows transB
            trans_b = proto_attribute(node, "transB", 0)
            axis = 0 if trans_b else 1
        slots.append(WeightSlot(path, graph, node, spec[0], tensor, owner, axis % len(tensor.dims)))
    return slots


def _channel_scale(w: np.ndarray, axis: int, top: float) -> np.ndarray:
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce)
    return np.where(amax > 0, amax / top, 1.0).astype(np.float32)


def fp8_encode(w: np.ndarray, axis: int, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel scaled float8 weights (as ml_dtypes) and their float32 scales."""
    dtype, _, top = FP8[fmt]
    scale = _channel_scale(w, axis, top)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w / scale.reshape(shape)).astype(dtype), scale


def add_fp8_weights(proto: onnx.ModelProto, fmt: str, skip: set[str]) -> int:
    """Store weights as float8 and add a per-channel DequantizeLinear before each use; returns the count.

    Weights in If/Loop/Scan bodies are converted too: the DequantizeLinear goes into the body, the
    float8 tensor next to the float one it replaces (an outer weight stays outer). A weight shared by
    several nodes is encoded once per channel axis.
    """
    encoded: dict[tuple[str, int, int], str] = {}
    done = 0
    for slot in weight_slots(proto):
        if slot.node.name in skip:
            continue
        key = (slot.tensor.name, id(slot.owner), slot.axis)
        if key not in encoded:
            encoded[key] = _add_fp8_tensor(slot, fmt, len(encoded))
        quantized, node = encoded[key], slot.node
        deq = f"{quantized}_dq_{done}"
        slot.graph.node.insert(list(slot.graph.node).index(node), helper.make_node(
            "DequantizeLinear", [quantized, f"{quantized}_scale"], [deq], name=f"{node.name}_w_dq_{done}",
            axis=slot.axis))
        node.input[slot.index] = deq
        done += 1
    drop_unused_initializers(proto)
    return done


def _add_fp8_tensor(slot: WeightSlot, fmt: str, serial: int) -> str:
    """Add the float8 encoding of ``slot``'s weight (and its scale) next to it; returns its name."""
    _, elem, _ = FP8[fmt]
    q, scale = fp8_encode(numpy_helper.to_array(slot.tensor), slot.axis, fmt)
    name = f"{slot.tensor.name}_fp8_{serial}"
    slot.owner.initializer.extend([helper.make_tensor(name, elem, q.shape, q.view(np.uint8).tobytes(), raw=True),
                                   numpy_helper.from_array(scale, f"{name}_scale")])
    return name


def drop_unused_initializers(proto: onnx.ModelProto) -> None:
    """Remove initializers that nothing reads (the float copies of replaced weights).

    A read inside an If/Loop/Scan body counts: an outer weight only a body uses stays.
    """
    drop_graph_initializers(proto.graph)


def fp4_round(w: np.ndarray, block: int) -> np.ndarray:
    """Round onto the E2M1 grid with one scale per ``block`` consecutive values of the last axis.

    The scale is absmax / 6 per block (NVFP4/MXFP4 style, scale kept in float32 here).
    """
    flat = w.reshape(-1, w.shape[-1])
    pad = (-flat.shape[1]) % block
    padded = np.pad(flat, ((0, 0), (0, pad)))
    blocks = padded.reshape(flat.shape[0], -1, block)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = np.where(amax > 0, amax / FP4_MAX, 1.0).astype(np.float32)
    grid = (blocks / scale).astype(ml_dtypes.float4_e2m1fn).astype(np.float32) * scale
    return grid.reshape(flat.shape[0], -1)[:, : flat.shape[1]].reshape(w.shape).astype(np.float32)


def simulate_fp4_weights(proto: onnx.ModelProto, block: int, skip: set[str]) -> int:
    """Replace weights by their E2M1-rounded values (stored in float32), bodies included; returns how many nodes."""
    rounded: set[tuple[str, int]] = set()  # a shared weight is rounded once
    done = 0
    for slot in weight_slots(proto):
        if slot.node.name in skip:
            continue
        key = (slot.tensor.name, id(slot.owner))
        if key not in rounded:
            grid = fp4_round(numpy_helper.to_array(slot.tensor), block)
            slot.tensor.CopyFrom(numpy_helper.from_array(grid, slot.tensor.name))
            rounded.add(key)
        done += 1
    return done
