"""Predict a model's latency on a device from that device's latency file (``edgec profile --export-device``).

The file holds single-op micro-benchmarks measured on the device. From each one the model keeps the
time of the kernel that does the op's work (Conv, FusedConv, QLinearConv, MatMulInteger, ...) and
drops the glue ORT adds around a lone op (NCHWc reorders, layout transposes, the Q/DQ pair at the
edges of an int8 micro-model): inside a whole network that glue runs once at the network's edges,
not per op. For each op class (op type, precision, and for Conv its kind: depthwise, pointwise or
dense, and whether its channel counts fit the NCHWc block, which decides ORT's kernel) the model
fits kernel time as a non-negative combination of FLOPs, bytes touched and a fixed cost
(nn-Meter's per-kernel idea with a linear kernel model instead of random forests: a class has
tens of points, not thousands). The fit minimises relative error, because small kernels dominate
pruned and mobile networks. Nodes ORT fuses into their producer at ORT_ENABLE_ALL (an activation
or residual Add after a Conv, a bias Add after a MatMul, BatchNormalization) cost nothing of their
own. A node of a class the file never measured is costed by its bytes at the device's measured
elementwise bandwidth. The prediction is the sum over nodes plus the device's per-run overhead.

``calibrate`` folds in whole-model measurements: per precision it scales the node sum by the ratio of
measured to predicted latency, so measured results correct the kernel tables' systematic error
(fusions the model does not know, cache effects of a whole network, machine load). That ratio moves
with the model's size (ORT's profiler on efficientnet-b0: Conv runs at 1.62x its standalone price in
the fp32 network, 1.50x once it is pruned by 0.6; resnet18's int8 kernels move the other way), so
once the measured models span a range of sizes the ratio is fitted as a power of the size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import onnx

from edgec.compiler.search.measure import HostLatency
from edgec.core.ir import Feeds
from edgec.core.stats import node_flops, value_shapes
from edgec.runtime.devices.sweep import DeviceLatencyTable, load_device_file
from edgec.targets.profile import TargetProfile

_ELEMENTWISE_FALLBACK = ("Add", "Mul", "Relu", "Clip", "Sigmoid")
# Ops ORT removes or folds at load time: they cost nothing at run time.
_FREE_OPS = {"Identity", "Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout"}
# Kernels ORT wraps around a lone micro-benchmarked op; in a network they run once, at its edges.
_GLUE_KERNELS = {"ReorderInput", "ReorderOutput", "Transpose", "QuantizeLinear", "DequantizeLinear"}
# Ops ORT's Conv fusions (FusedConv, NCHWc Conv with activation and sum) absorb into the Conv.
_CONV_ABSORBS = {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh", "Add", "BatchNormalization"}
# Fused and contrib kernels priced by the measured class that does the same work (FLOPs from analysis).
_PRICED_AS = {"MatMulInteger": ("MatMul", "int8"), "DynamicQuantizeMatMul": ("MatMul", "int8"),
              "MultiHeadAttention": ("MatMul", "fp32"), "Attention": ("MatMul", "fp32"),
              "FusedMatMul": ("MatMul", "fp32"), "SkipLayerNormalization": ("LayerNormalization", "fp32"),
              "BiasGelu": ("Erf", "fp32"), "Gelu": ("Erf", "fp32"), "QuickGelu": ("Sigmoid", "fp32")}
NCHWC_BLOCK = 16  # MLAS's NCHWc block on AVX-512 hosts; Convs off the block run ORT's plain kernel
# Calibration fits a size exponent only from measured models whose sizes span at least this factor (closer
# ones leave it to timing noise), and clips it: two noisy pairs must not extrapolate far.
MIN_SIZE_SPAN = 1.25
MAX_SIZE_EXPONENT = 0.33


@dataclasses.dataclass(frozen=True)
class NodeFeatures:
    """What the latency model knows about one node (``fused``: ORT folds it into its producer)."""

    name: str
    op_class: tuple[str, str, str]
    flops: float
    bytes: float
    fused: bool = False


@dataclasses.dataclass(frozen=True)
class PrecisionScale:
    """Measured over tabled kernel time for one precision, in a model of kernel size ``size_ms``.

    ``factor * (size_ms / reference_ms) ** exponent``: the exponent is 0 (one factor for every size)
    until calibration pairs of different sizes fit it.
    """

    factor: float = 1.0
    exponent: float = 0.0

    def at(self, size_ms: float, reference_ms: float) -> float:
        """The scale for a model whose uncalibrated kernel time is ``size_ms``."""
        return self.factor * (max(size_ms, 1e-9) / reference_ms) ** self.exponent

    @classmethod
    def fit(cls, rows: Sequence[tuple[float, float]], reference_ms: float) -> PrecisionScale:
        """From (size ms, measured/tabled ratio) rows: a log-log line when they span MIN_SIZE_SPAN, else the median."""
        sizes = np.array([size for size, _ in rows])
        ratios = np.array([ratio for _, ratio in rows])
        exponent = 0.0
        if len(rows) >= 2 and sizes.max() / sizes.min() >= MIN_SIZE_SPAN:
            slope = float(np.polyfit(np.log(sizes / reference_ms), np.log(ratios), 1)[0])
            exponent = float(np.clip(slope, -MAX_SIZE_EXPONENT, MAX_SIZE_EXPONENT))
        return cls(float(np.median(ratios / (sizes / reference_ms) ** exponent)), exponent)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted latency, per node and in total (ms); ``covered`` = share of nodes with a fitted class."""

    total_ms: float
    per_node_ms: dict[str, float]
    covered: float


def _conv_kind(weight_shape: Sequence[int | None] | None, group: int, in_channels: int | None = None) -> str:
    if not weight_shape or len(weight_shape) < 3 or None in weight_shape:
        return ""
    out_ch, in_per_group = int(cast(int, weight_shape[0])), int(cast(int, weight_shape[1]))
    if group > 1 and in_per_group == 1:
        kind = "depthwise"
    else:
        kind = "pointwise" if all(k == 1 for k in weight_shape[2:]) else "dense"
    channels = [out_ch] + ([in_per_group * group] if kind != "depthwise" and (in_channels or 0) > 4 else [])
    return kind if all(c % NCHWC_BLOCK == 0 for c in channels) else f"{kind}-unblocked"


def _itemsize(precision: str) -> int:
    return 1 if precision == "int8" else 2 if precision == "fp16" else 4


def _kernel_ms(entry: dict[str, Any]) -> float:
    """The op's own kernel time: the micro-model's kernels less the glue around a lone op."""
    nodes = entry.get("nodes") or []
    own = [n["total_ms"] for n in nodes if n["op_type"] not in _GLUE_KERNELS or n["op_type"] == entry["op_type"]]
    return float(sum(own)) if own else float(entry["kernel_ms"])


def _entry_features(entry: dict[str, Any]) -> tuple[tuple[str, str, str], float, float]:
    shapes = [i["shape"] for i in entry["inputs"]] + entry["output_shapes"]
    kind = ""
    if entry["op_type"] == "Conv":
        x, w = entry["inputs"][0]["shape"], entry["inputs"][1]["shape"]
        kind = _conv_kind(w, int(entry["attributes"].get("group", 1)), x[1] if len(x) > 1 else None)
    size = sum(int(np.prod(s)) for s in shapes) * _itemsize(entry["precision"])
    return (entry["op_type"], entry["precision"], kind), float(entry["flops"]), float(size)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a few columns: the best non-negative fit over column subsets.

    Three features give seven subsets; enumerating them is exact and keeps scipy out of the core.
    """
    best, best_err = np.zeros(a.shape[1]), float(np.sum(b**2))
    for k in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), k):
            sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            err = float(np.sum((a[:, cols] @ sol - b) ** 2))
            if (sol >= 0).all() and err < best_err:
                best, best_err = np.zeros(a.shape[1]), err
                best[list(cols)] = sol
    return best


def _fit(points: list[tuple[float, float, float]]) -> np.ndarray:
    """Non-negative [per FLOP, per byte, fixed] coefficients from (flops, bytes, ms) points.

    Rows are divided by the measured time, so the fit minimises relative, not absolute, error.
    """
    x = np.array([[f, b, 1.0] for f, b, _ in points])
    y = np.array([max(ms, 1e-6) for _, _, ms in points])
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    coef = np.zeros(3)
    if len(points) >= 3:
        coef = _nnls((x / scale) / y[:, None], np.ones_like(y)) / scale
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
            groups.setdefault(op_class, []).append((flops, size, _kernel_ms(entry)))
            walls.append(float(entry["wall_ms"]["p50_ms"]) - float(entry["kernel_ms"]))
        self.device = table.device
        self.fits = {op_class: _fit(points) for op_class, points in groups.items()}
        # Per-run overhead of session.run beyond its kernels (ORT's fixed cost).
        self.overhead_ms = max(statistics.median(walls), 0.0) if walls else 0.0
        bandwidth = [points for (op, prec, _), points in groups.items()
                     if op in _ELEMENTWISE_FALLBACK and prec == "fp32"]
        self.ms_per_byte = statistics.median(ms / max(b, 1.0) for pts in bandwidth for _, b, ms in pts) \
            if bandwidth else 0.0
        self.precision_scales: dict[str, PrecisionScale] = {}  # from calibrate; fp32's stands in for the rest
        self.reference_ms = 1.0  # the size the scales' exponents are relative to

    def node_ms(self, node: NodeFeatures) -> tuple[float, bool]:
        """Predicted kernel ms of one node, and whether its class was measured."""
        if node.op_class[0] in _FREE_OPS or node.fused:
            return 0.0, True
        coef = self.fits.get(node.op_class)
        if coef is None and node.op_class[2].endswith("-unblocked"):
            coef = self.fits.get((*node.op_class[:2], node.op_class[2].removesuffix("-unblocked")))
        if coef is None:
            return node.bytes * self.ms_per_byte, False
        return float(coef @ np.array([node.flops, node.bytes, 1.0])), True

    @property
    def scale(self) -> float:
        """fp32 kernels' calibration factor (1.0 before calibration)."""
        return self.precision_scales.get("fp32", PrecisionScale()).factor

    @property
    def scales(self) -> dict[str, float]:
        """The other precisions' calibration factors, where a measured model carried them."""
        return {p: s.factor for p, s in self.precision_scales.items() if p != "fp32"}

    def scale_for(self, precision: str, size_ms: float) -> float:
        """Calibrated over tabled kernel time of ``precision`` in a model of uncalibrated kernel time ``size_ms``."""
        default = self.precision_scales.get("fp32", PrecisionScale())
        return self.precision_scales.get(precision, default).at(size_ms, self.reference_ms)

    def predict(self, model: onnx.ModelProto) -> Prediction:
        """Latency of ``model`` on this device (static shapes needed)."""
        features = model_features(model)
        priced = [(node, *self.node_ms(node)) for node in features]
        size = sum(ms for _, ms, _ in priced)
        per_node = {node.name: ms * self.scale_for(node.op_class[1], size) for node, ms, _ in priced}
        total = sum(per_node.values()) + self.overhead_ms
        return Prediction(total, per_node, sum(known for *_, known in priced) / max(len(features), 1))

    def _by_precision(self, model: onnx.ModelProto) -> dict[str, float]:
        """Unscaled predicted kernel ms of ``model``, summed per precision."""
        sums: dict[str, float] = {}
        for node in model_features(model):
            sums[node.op_class[1]] = sums.get(node.op_class[1], 0.0) + self.node_ms(node)[0]
        return sums

    def total_ms(self, sums: Mapping[str, float]) -> float:
        """Calibrated latency of a model from its tabled kernel ms per precision (``_by_precision``).

        Equals ``predict(model).total_ms`` without pricing the model's nodes again.
        """
        size = sum(sums.values())
        return sum(ms * self.scale_for(p, size) for p, ms in sums.items()) + self.overhead_ms

    def calibrate(self, pairs: Iterable[tuple[onnx.ModelProto, float]]) -> float:
        """``calibrate_sums`` on (model, measured ms) pairs."""
        return self.calibrate_sums([(self._by_precision(model), ms) for model, ms in pairs])

    def calibrate_sums(self, pairs: Iterable[tuple[Mapping[str, float], float]]) -> float:
        """Fit the precisions' scales from (tabled kernel ms per precision, measured ms) pairs; returns fp32's factor.

        fp32 comes from the pairs that are (almost) all fp32 (else mostly, else all pairs): measured over
        tabled kernel time, against the model's size. Each other precision comes from the pairs where it
        carries at least a quarter of the tabled time: what is left of the measurement once the rest is
        scaled as fp32, over its own tabled time. So an int8 model measured once corrects the int8 kernel
        tables, whose error differs from fp32's. A precision no pair carries takes fp32's scale. Sizes are
        relative to the fp32 pairs' median size.
        """
        self.precision_scales, self.reference_ms = {}, 1.0
        split = [(sums, max(ms - self.overhead_ms, 1e-9)) for sums, ms in pairs]
        if not split:
            return self.scale
        fp32 = next(chosen for share in (0.95, 0.7, 0.0)
                    if (chosen := [(sums, ms) for sums, ms in split
                                   if sums.get("fp32", 0.0) >= share * sum(sums.values())]))
        self.reference_ms = max(statistics.median(sum(sums.values()) for sums, _ in fp32), 1e-9)
        self.precision_scales["fp32"] = PrecisionScale.fit(
            [(sum(sums.values()), ms / max(sum(sums.values()), 1e-9)) for sums, ms in fp32], self.reference_ms)
        for precision in {p for sums, _ in split for p in sums} - {"fp32"}:
            rows = []
            for sums, ms in split:
                size, own = sum(sums.values()), sums.get(precision, 0.0)
                if own >= size / 4:
                    rows.append((size, (ms - self.scale_for("fp32", size) * (size - own)) / own))
            rows = [(size, ratio) for size, ratio in rows if ratio > 0]
            if rows:
                self.precision_scales[precision] = PrecisionScale.fit(rows, self.reference_ms)
        return self.scale


class PredictedLatency:
    """Latency predicted from a device file (``edgec profile --export-device``): a ``LatencySource``."""

    measured = False  # nothing is timed: the same model always gets the same figure
    prices = True

    def __init__(self, original: bytes, device_file: str) -> None:
        self.model = LatencyModel(load_device_file(device_file))
        self.baseline_ms = self._predict(original)
        self.label = f"predicted for device {self.model.device} from {device_file}"

    def _predict(self, model: bytes) -> float:
        return self.model.predict(onnx.load_from_string(model)).total_ms

    def ratios(self, models: Sequence[bytes], min_rounds: int = 0) -> list[float]:
        """Each model's predicted latency over the original's (``min_rounds``: unused, nothing is timed)."""
        return [self._predict(m) / self.baseline_ms for m in models]


class CalibratedLatency:
    """A device file's prediction calibrated on this host's timings: a ``LatencySource`` for host targets.

    When the target is this host its latency can be measured, so the kernel tables' error need not
    stand: the original is timed (as ``HostLatency`` times it) and calibrates the model before any
    candidate is priced, and a model asked for again, which only the search's confirmation of a
    choice does, is timed in a pair with the original, and every measurement so far recalibrates
    the model (``LatencyModel.calibrate``), so later predictions use them all. A candidate is
    otherwise priced, not timed: its predicted latency over the original's, both under the current
    calibration, times the original's measured latency.
    """

    measured = True  # a choice is timed again (on the target, this host) before it is accepted
    prices = True  # a model is timed only when asked for again (a confirmation)

    def __init__(self, original: bytes, feeds: Feeds, target: TargetProfile, device_file: str) -> None:
        self.model = LatencyModel(load_device_file(device_file))
        self.host = HostLatency(original, feeds, target)
        self.original = onnx.load_from_string(original)
        self.original_digest = _digest(original)
        # digest -> (model, its measured ratios to the original, its prediction before it was measured)
        self.timed: dict[str, tuple[onnx.ModelProto, list[float], float]] = {}
        # digest -> its tabled kernel ms per precision: recalibrating after each timing reuses them, as pricing
        # a model's nodes runs shape inference (0.7 s for ResNet-50).
        self._kernel_sums: dict[str, dict[str, float]] = {}
        self._priced: set[str] = set()  # digests of the models predicted so far
        self._record(self.original_digest, self.original, 1.0)
        self.label = (f"predicted for device {self.model.device} from {device_file}, calibrated on this host's "
                      f"timings ({target.intra_op_num_threads} thread(s))")

    @property
    def baseline_ms(self) -> float:
        """The original's measured latency: the median of its medians over every timing."""
        return self.host.baseline_ms

    def ratios(self, models: Sequence[bytes], min_rounds: int = 5) -> list[float]:
        """Each model's latency over the original's: predicted, or timed when asked for a second time."""
        out = []
        for model in models:
            digest, proto = _digest(model), onnx.load_from_string(model)
            if digest in self.timed or digest in self._priced:
                ((base_ms, model_ms),) = self.host.timings([model], min_rounds)
                self._record(digest, proto, model_ms / base_ms)
                out.append(model_ms / base_ms)
            else:
                self._priced.add(digest)
                out.append(self.model.predict(proto).total_ms / self._original_ms)
        return out

    def pairs(self) -> list[tuple[onnx.ModelProto, float]]:
        """(model, measured ms) of every timed model: its median ratio times the original's latency."""
        return [(proto, self._measured_ms(ratios)) for proto, ratios, _ in self.timed.values()]

    def _measured_ms(self, ratios: list[float]) -> float:
        return statistics.median(ratios) * self.baseline_ms

    def _record(self, digest: str, proto: onnx.ModelProto, ratio: float) -> None:
        if digest not in self.timed:
            self._kernel_sums[digest] = self.model._by_precision(proto)
            self.timed[digest] = (proto, [], self.model.total_ms(self._kernel_sums[digest]))
        self.timed[digest][1].append(ratio)
        self.model.calibrate_sums([(self._kernel_sums[d], self._measured_ms(ratios))
                                   for d, (_, ratios, _) in self.timed.items()])
        self._original_ms = self.model.total_ms(self._kernel_sums[self.original_digest])  # the new calibration

    @property
    def calibration(self) -> dict[str, Any]:
        """For the report: the pairs, the fitted scales, and each timed model's measured and predicted ms.

        ``timings``: how often the model was timed (``measured_ms``: the median); ``uncalibrated_ms``: the
        kernel tables alone; ``before_ms``: what the search predicted before the model was timed;
        ``after_ms``: the prediction calibrated on every timing. ``exponents``: each precision's size
        exponent, relative to ``reference_ms`` of uncalibrated kernel time (0: one scale for every size).
        """
        rows = []
        for digest, (_, ratios, before) in self.timed.items():
            sums = self._kernel_sums[digest]
            rows.append({"model": "original" if digest == self.original_digest else digest,
                         "timings": len(ratios), "measured_ms": self._measured_ms(ratios),
                         "uncalibrated_ms": sum(sums.values()) + self.model.overhead_ms,
                         "before_ms": before, "after_ms": self.model.total_ms(sums)})
        return {"pairs": len(rows), "scale": self.model.scale, "scales": dict(self.model.scales),
                "exponents": {p: s.exponent for p, s in self.model.precision_scales.items()},
                "reference_ms": self.model.reference_ms, "overhead_ms": self.model.overhead_ms, "models": rows}


def _digest(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


def _precision(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str:
    # A weighted op fed by DequantizeLinear runs as a QDQ int8 kernel after ORT's fusion.
    fed = [producers.get(name) for name in node.input[:2]]
    return "int8" if any(p is not None and p.op_type == "DequantizeLinear" for p in fed) else "fp32"


def _through_qdq(name: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The real producer of ``name``, looking through Q/DQ pairs (int8 graphs put them between ops)."""
    node = producers.get(name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        node = producers.get(node.input[0])
    return node


def _is_silu(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    gate = [producers.get(i) for i in node.input]
    return len(node.input) == 2 and any(g is not None and g.op_type == "Sigmoid" and g.input[0] in node.input
                                        for g in gate)


def _fused(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], consumers: dict[str, int],
           constants: set[str]) -> bool:
    """Whether ORT folds ``node`` into the kernel that produces its input (Conv or MatMul fusions)."""
    if not node.input:
        return False
    if node.op_type == "Mul" and _is_silu(node, producers):
        return True  # x * Sigmoid(x): ORT runs one QuickGelu kernel, priced on the Sigmoid
    if node.op_type == "Add" and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                                     for i in node.input):
        return False  # int8 residual Add stays a QLinearAdd of its own
    source = _through_qdq(node.input[0], producers)
    if node.op_type == "Add" and len(node.input) == 2 and source is not None and source.op_type != "Conv":
        source = _through_qdq(node.input[1], producers)  # residual: Conv output on either side
    if source is None or consumers.get(source.output[0], 0) != 1:
        return False
    if source.op_type == "Conv":
        return node.op_type in _CONV_ABSORBS
    if source.op_type == "Add" and node.op_type in ("Relu", "Clip"):
        return _fused(source, producers, consumers, constants)  # Conv + Add + Relu is one NCHWc kernel
    return source.op_type == "MatMul" and node.op_type == "Add" and any(i in constants for i in node.input)


def model_features(model: onnx.ModelProto) -> list[NodeFeatures]:
    """Op class, FLOPs and bytes of each main-graph node; Q/DQ nodes fold into their int8 consumer."""
    shapes = value_shapes(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                              for o in n.output}
    features = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        precision = _precision(node, producers)
        kind = ""
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            x = shapes.get(node.input[0])
            kind = _conv_kind(shapes.get(node.input[1]), group, x[1] if x and len(x) > 1 else None)
        # A Gather reads only the rows it picks, not its whole (embedding) table.
        read = [n for n in node.input if n and not (node.op_type == "Gather" and n in constants)]
        values = [shapes.get(n) for n in [*read, *node.output]]
        size = sum(int(np.prod(cast("list[int]", s))) for s in values if s and None not in s) * _itemsize(precision)
        op_type, precision = _PRICED_AS.get(node.op_type, (node.op_type, precision))
        features.append(NodeFeatures(node.name or f"{node.op_type}_{i}", (op_type, precision, kind),
                                     float(node_flops(node, shapes)), float(size),
                                     _fused(node, producers, consumers, constants)))
    return features


def _round_channels(channels: int, factor: float, multiple: int) -> int:
    return channels if channels <= 4 else max(multiple, int(round(channels * factor / multiple)) * multiple)


def scaled_conv_model(model: onnx.ModelProto, factor: float, multiple: int = 8) -> onnx.ModelProto:
    """Every static-shaped Conv of ``model`` alone, its channel counts scaled by ``factor``: extra sweep shapes.

    Pruned configurations run Convs at channel counts the unpruned zoo never uses (and off the NCHWc
    block); sweeping these (``export_device_file(models=[path of this model saved])``) lets the
    per-class fits see them. Nodes are unconnected; only their shapes matter to the sweep.
    """
    from onnx import TensorProto, helper, shape_inference

    shapes = value_shapes(model)
    nodes, inputs, outputs, inits = [], [], [], []
    for i, node in enumerate(n for n in model.graph.node if n.op_type == "Conv"):
        x_or_none, w_or_none = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not x_or_none or not w_or_none or None in x_or_none or None in w_or_none or len(x_or_none) != 4:
            continue
        x, w = cast("list[int]", x_or_none), cast("list[int]", w_or_none)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        cin, cout = _round_channels(x[1], factor, multiple), _round_channels(w[0], factor, multiple)
        if group > 1:  # depthwise stays depthwise; other grouped Convs are rare in the zoo
            if group != x[1] or w[1] != 1:
                continue
            cin = cout = group = _round_channels(group, factor, multiple)
        attrs = [a for a in node.attribute if a.name != "group"]
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [x[0], cin, *x[2:]]))
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [cout, cin // group, *w[2:]],
                                        np.zeros(cout * (cin // group) * int(np.prod(w[2:])), np.float32)))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
        conv = helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"y{i}"], name=f"conv{i}", group=group)
        conv.attribute.extend(attrs)
        nodes.append(conv)
    graph = helper.make_graph(nodes, f"scaled_{factor}", inputs, outputs, inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return shape_inference.infer_shapes(out)
