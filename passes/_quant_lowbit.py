"""Weight encoders for fp8 (stored, with DequantizeLinear) and fp4 (simulated) on weighted nodes' initializers.

Written by hand because ORT's quantization tools emit neither float8 E5M2 nor FLOAT4E2M1, and the
ONNX reference evaluator is what checks the rounding.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

# Which input of each op holds the weight, and the axis of its output channels (per-channel scales).
WEIGHT_INPUT = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, None), "MatMul": (1, -1)}
FP8 = {"e4m3fn": (ml_dtypes.float8_e4m3fn, onnx.TensorProto.FLOAT8E4M3FN, 448.0),
       "e5m2": (ml_dtypes.float8_e5m2, onnx.TensorProto.FLOAT8E5M2, 57344.0)}
FP4_MAX = 6.0  # largest E2M1 magnitude


def weight_slots(proto: onnx.ModelProto) -> list[tuple[onnx.NodeProto, int, onnx.TensorProto, int]]:
    """(node, input index, float initializer, channel axis) for each weighted node with a constant weight."""
    inits = {t.name: t for t in proto.graph.initializer}
    slots = []
    for node in proto.graph.node:
        spec = WEIGHT_INPUT.get(node.op_type)
        if spec is None or len(node.input) <= spec[0] or node.input[spec[0]] not in inits:
            continue
        tensor = inits[node.input[spec[0]]]
        if tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) < 2:
            continue
        axis = spec[1]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        slots.append((node, spec[0], tensor, axis % len(tensor.dims)))
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
    """Store weights as float8 and add a per-channel DequantizeLinear before each use; returns the count."""
    _, elem, _ = FP8[fmt]
    done = 0
    for node, index, tensor, axis in weight_slots(proto):
        if node.name in skip:
            continue
        q, scale = fp8_encode(numpy_helper.to_array(tensor), axis, fmt)
        name = tensor.name
        qt = helper.make_tensor(f"{name}_fp8", elem, q.shape, q.view(np.uint8).tobytes(), raw=True)
        proto.graph.initializer.extend([qt, numpy_helper.from_array(scale, f"{name}_fp8_scale")])
        deq = f"{name}_fp8_dq_{done}"
        proto.graph.node.insert(list(proto.graph.node).index(node), helper.make_node(
            "DequantizeLinear", [qt.name, f"{name}_fp8_scale"], [deq], name=f"{node.name}_w_dq", axis=axis))
        node.input[index] = deq
        done += 1
    drop_unused_initializers(proto)
    return done


def drop_unused_initializers(proto: onnx.ModelProto) -> None:
    """Remove initializers no node or graph output reads (the float copies of replaced weights)."""
    used = {name for n in proto.graph.node for name in n.input} | {o.name for o in proto.graph.output}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


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
    """Replace weights by their E2M1-rounded values (stored in float32); returns how many."""
    done = 0
    for node, _, tensor, _ in weight_slots(proto):
        if node.name in skip:
            continue
        rounded = fp4_round(numpy_helper.to_array(tensor), block)
        tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
        done += 1
    return done
