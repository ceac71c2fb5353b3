"""Static QDQ int8 through ORT's quantize_static, plus the layout-aware choice of what to leave in float."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgec.core import progress
from edgec.core.errors import UnsupportedOpError
from edgec.core.ir import Feeds
from edgec.passes.quant.calib import FeedReader
from edgec.runtime.timing import interleaved_medians

logger = logging.getLogger(__name__)

CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
# Float ops ORT's CPU EP has no QDQ fusion for: between Q/DQ they run in NCHW float, so ORT adds
# Transposes around them (its int8 convs are NHWC). SE gates (ReduceMean -> ... -> Mul) and
# HardSwish/SiLU activations are the usual ones in mobile CNNs. With quantize-int8's default
# ``int8_rewrites`` most of them become int8 kernels (_quant_int8ops); these explicit placements
# remain for the models and targets where that rewrite is off.
FLOAT_ISLAND_OPS = frozenset({"HardSwish", "HardSigmoid", "Mul", "ReduceMean", "Sigmoid", "GlobalAveragePool",
                              "Div", "Sub"})


@dataclasses.dataclass(frozen=True)
class StaticOptions:
    """What quantize_static is asked for."""

    calibration: str = "minmax"
    per_channel: bool = True
    activation_dtype: str = "uint8"


def preprocess(src: Path, dst: Path) -> str:
    """ORT's quant_pre_process: symbolic shape inference and basic graph optimizations.

    ORT's symbolic shape inference gives up on some real exports (Paddle2ONNX recognizers, dims that
    only data decides: "Incomplete symbolic shape inference"); the ONNX shape inference and graph
    optimizations that remain are enough to quantize, so the step is retried without it. Returns
    why it was skipped ('' when it ran). The temporary files ORT writes go next to ``dst``.
    """
    try:
        # On that failure ORT saves "sym_shape_infer_temp.onnx" and its data into the current folder:
        # run it from the pass's own temporary folder (passes run one at a time in a process).
        with contextlib.chdir(dst.parent):
            quant_pre_process(str(src.resolve()), str(dst.resolve()))
        return ""
    except Exception as exc:  # noqa: BLE001 - ORT raises a bare Exception here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return reason


def quantize(pre: Path, out: Path, feeds: Sequence[Feeds], opts: StaticOptions, *, cache: Path,
             exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> onnx.ModelProto:
    """quantize_static in QDQ form with int8 weights; calibration ranges are cached in ``cache``."""
    extra = {"ActivationSymmetric": opts.activation_dtype == "int8", "WeightSymmetric": True}
    # With the ranges cached ORT runs no feed: no task then (a total of 0 shows none).
    with progress.task("calibration", total=0 if cache.is_file() else len(feeds)) as step:
        try:
            quantize_static(str(pre), str(out), FeedReader(feeds, on_done=step), quant_format=QuantFormat.QDQ,
                            per_channel=opts.per_channel, activation_type=ACTIVATION_TYPES[opts.activation_dtype],
                            weight_type=QuantType.QInt8, calibrate_method=CALIBRATORS[opts.calibration],
                            nodes_to_exclude=list(exclude),
                            nodes_to_quantize=list(only) if only is not None else None,
                            extra_options=extra, calibration_cache_path=str(cache))
        except Exception as exc:  # noqa: BLE001 - ORT's quantizer fails on some real exports with assorted types
            # (tf2onnx biases that are not 1-d: "The truth value of an array ... is ambiguous" in per-channel
            # bias scaling). The user gets ORT's reason and the option that avoids the common case.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "; per_channel = false in [pass-options.quantize-int8] may avoid it" if opts.per_channel else ""
            raise UnsupportedOpError(f"quantize-int8: ONNX Runtime's quantize_static failed on this model "
                                     f"({type(exc).__name__}: {reason}){hint}") from exc
    return onnx.load(str(out))


def depthwise_convs(proto: onnx.ModelProto) -> list[str]:
    """Grouped convs with one channel per group; ORT's int8 depthwise kernel is slower than its fp32 one."""
    return [n.name for n in proto.graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def island_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes of op types ORT cannot fuse between Q/DQ (see FLOAT_ISLAND_OPS)."""
    return [n.name for n in proto.graph.node if n.op_type in FLOAT_ISLAND_OPS]


def placement_candidates(pre: onnx.ModelProto) -> dict[str, list[str]]:
    """Named exclusion lists to try: everything int8, or float islands (and depthwise convs) left float."""
    islands, depthwise = island_nodes(pre), depthwise_convs(pre)
    candidates: dict[str, list[str]] = {"all": []}
    if islands:
        candidates["float-islands"] = islands
    if islands and depthwise:
        candidates["float-islands+depthwise"] = islands + depthwise
    return candidates


def fastest(models: dict[str, bytes], fp32: bytes, feed: Feeds) -> tuple[str, dict[str, float]]:
    """Time fp32 and each candidate interleaved on one thread; return the fastest name and ratios."""
    names = list(models)
    times = interleaved_medians([fp32, *models.values()], feed, rounds=4, runs=3, warmup=2)
    ratios = {name: t / times[0] for name, t in zip(names, times[1:], strict=True)}
    return min(ratios, key=ratios.__getitem__), ratios
