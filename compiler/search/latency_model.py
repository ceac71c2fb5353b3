"""Predict a model's latency on a device from that device's latency file (``edgec profile --export-device``).

The file holds kernel times of single-op micro-benchmarks measured on the device. For each op
class (op type, precision, and for Conv whether it is depthwise, pointwise or dense) the model fits
kernel time as a non-negative combination of FLOPs, bytes touched and a fixed cost, by least
squares over that class's measurements (nn-Meter's per-kernel idea, with a linear kernel model
instead of its random forests: the sweep has a handful of points per class). A node of a class
the file never measured is costed by its bytes at the device's measured elementwise bandwidth.
The prediction is the sum over nodes plus the device's measured per-run overhead.

``calibrate`` folds in whole-model measurements: it scales the node sum by the median ratio of
measured to predicted latency, so measured results correct the kernel tables' systematic error
(fusions the micro-benchmarks do not see, cache effects of a whole network).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx

from edgec.compiler.analysis import node_flops, value_shapes
from edgec.runtime.devices.sweep import DeviceLatencyTable

_ELEMENTWISE_FALLBACK = ("Add", "Mul", "Relu", "Clip", "Sigmoid")
# Ops ORT removes or folds at load time: they cost nothing at run time.
_FREE_OPS = {"Identity", "Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout"}


@dataclasses.dataclass(frozen=True)
class NodeFeatures:
    """What the latency model knows about one node."""

    name: str
    op_class: tuple[str, str, str]
    flops: float
    bytes: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted latency, per node and in total (ms); ``covered`` = share of nodes with a fitted class."""

    total_ms: float
    per_node_ms: dict[str, float]
    covered: float


def _conv_kind(weight_shape: Sequence[int | None] | None, group: int) -> str:
    if not weight_shape or len(weight_shape) < 3:
        return ""
    if group > 1 and weight_shape[1] == 1:
        return "depthwise"
    return "pointwise" if all(k == 1 for k in weight_shape[2:]) else "dense"


def _itemsize(precision: str) -> int:
    return 1 if precision == "int8" else 2 if precision == "fp16" else 4


def _entry_features(entry: dict[str, Any]) -> tuple[tuple[str, str, str], float, float]:
    shapes = [i["shape"] for i in entry["inputs"]] + entry["output_shapes"]
    kind = ""
    if entry["op_type"] == "Conv":
        kind = _conv_kind(entry["inputs"][1]["shape"], int(entry["attributes"].get("group", 1)))
    size = sum(int(np.prod(s)) for s in shapes) * _itemsize(entry["precision"])
    return (entry["op_type"], entry["precision"], kind), float(entry["flops"]), float(size)


def _fit(points: list[tuple[float, float, float]]) -> np.ndarray:
    """Non-negative [per FLOP, per byte, fixed] coefficients from (flops, bytes, ms) points."""
    x = np.array([[f, b, 1.0] for f, b, _ in points])
    y = np.array([ms for _, _, ms in points])
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    if len(points) >= 3:
        coef, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
        coef = np.clip(coef, 0.0, None) / scale
    else:
        coef = np.zeros(3)
    if not coef.any():
        # Too few points or a degenerate fit: one rate on the dominant feature.
        use = 0 if x[:, 0].max() > 0 else 1
        coef[use] = statistics.median(ms / max(row[use], 1e-12) for row, ms in zip(x, y, strict=True))
    return coef


class LatencyModel:
    """Per-op-class kernel time fits from one device file."""

    def __init__(self, table: DeviceLatencyTable) -> None:
        groups: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
        walls = []
        for entry in table.entries:
            if not entry.get("ok"):
                continue
            op_class, flops, size = _entry_features(entry)
            groups.setdefault(op_class, []).append((flops, size, float(entry["kernel_ms"])))
            walls.append(float(entry["wall_ms"]["p50_ms"]) - float(entry["kernel_ms"]))
        self.device = table.device
        self.fits = {op_class: _fit(points) for op_class, points in groups.items()}
        # Per-run overhead of session.run beyond its kernels (ORT's fixed cost).
        self.overhead_ms = max(statistics.median(walls), 0.0) if walls else 0.0
        bandwidth = [points for (op, prec, _), points in groups.items()
                     if op in _ELEMENTWISE_FALLBACK and prec == "fp32"]
        self.ms_per_byte = statistics.median(ms / max(b, 1.0) for pts in bandwidth for _, b, ms in pts) \
            if bandwidth else 0.0
        self.scale = 1.0

    def node_ms(self, node: NodeFeatures) -> tuple[float, bool]:
        """Predicted kernel ms of one node, and whether its class was measured."""
        if node.op_class[0] in _FREE_OPS:
            return 0.0, True
        coef = self.fits.get(node.op_class)
        if coef is None:
            return node.bytes * self.ms_per_byte, False
        return float(coef @ np.array([node.flops, node.bytes, 1.0])), True

    def predict(self, model: onnx.ModelProto) -> Prediction:
        """Latency of ``model`` on this device (static shapes needed)."""
        per_node, covered = {}, 0
        features = model_features(model)
        for node in features:
            ms, known = self.node_ms(node)
            per_node[node.name] = ms * self.scale
            covered += known
        total = sum(per_node.values()) + self.overhead_ms
        return Prediction(total, per_node, covered / max(len(features), 1))

    def calibrate(self, pairs: Iterable[tuple[onnx.ModelProto, float]]) -> float:
        """Scale node times by the median measured/predicted ratio over (model, measured ms) pairs."""
        self.scale = 1.0
        ratios = [max(ms - self.overhead_ms, 1e-9) / max(self.predict(m).total_ms - self.overhead_ms, 1e-9)
                  for m, ms in pairs]
        self.scale = statistics.median(ratios) if ratios else 1.0
        return self.scale


def _precision(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str:
    # A weighted op fed by DequantizeLinear runs as a QDQ int8 kernel after ORT's fusion.
    fed = [producers.get(name) for name in node.input[:2]]
    return "int8" if any(p is not None and p.op_type == "DequantizeLinear" for p in fed) else "fp32"


def model_features(model: onnx.ModelProto) -> list[NodeFeatures]:
    """Op class, FLOPs and bytes of each main-graph node; Q/DQ nodes fold into their int8 consumer."""
    shapes = value_shapes(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    features = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        precision = _precision(node, producers)
        kind = ""
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kind = _conv_kind(shapes.get(node.input[1]), group)
        values = [shapes.get(n) for n in [*node.input, *node.output] if n]
        size = sum(int(np.prod(s)) for s in values if s and None not in s) * _itemsize(precision)
        features.append(NodeFeatures(node.name or f"{node.op_type}_{i}", (node.op_type, precision, kind),
                                     float(node_flops(node, shapes)), float(size)))
    return features
