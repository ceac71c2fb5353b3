"""quantize-int8 keeps a Concat float when its inputs' ranges differ over 16x (one int8 scale cannot hold both)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import outputs
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.pipeline import PipelineResult, run_pipeline
from edgec.core.errors import ConfigError
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.targets.registry import get_target

# max |int8 - fp32| over each Concat input's slice of "cat", over the slice's fp32 range, on held-out feeds:
# int8's own error through a conv reaches 2-3% at a few points (logits near 0, where the sigmoid is steepest);
# one shared scale gives over 50% on the 0-1 slice
MAX_SLICE_ERROR = 0.05


def _quantize(proto: onnx.ModelProto, feeds: list, **options) -> PipelineResult:
    ctx = BuildContext(get_target("cpu-x86"), feeds)
    options = {"placement": "all", "samples": len(feeds), **options}
    return run_pipeline(proto, [create_pass("quantize-int8", ctx, options)], ctx)


def _channel_errors(ref: np.ndarray, got: np.ndarray, q: float = 100.0) -> np.ndarray:
    """Per channel (axis 1): the q-th percentile of |got - ref| over the channel's fp32 range."""
    err = np.moveaxis(np.abs(got - ref), 1, 0).reshape(ref.shape[1], -1)
    ref_c = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1)
    return np.percentile(err, q, axis=1) / (ref_c.max(axis=1) - ref_c.min(axis=1))


def _concat_model(small: str) -> onnx.ModelProto:
    """x -> Conv -> Relu (0 to ~300) and x -> Conv -> ``small`` -> Concat "cat" (an output) -> 1x1 Conv -> "y".

    ``small`` is "Sigmoid" (0-1: ranges ~300x apart; logits within about +-2, where the sigmoid is not yet
    flat) or "Relu" (weights 2x smaller than the other branch's: ranges ~2x apart).
    """
    rng = np.random.default_rng(0)
    scale_b = 0.2 if small == "Sigmoid" else 10.0
    weights = {"wa": rng.standard_normal((4, 3, 3, 3)) * 20, "wb": rng.standard_normal((4, 3, 3, 3)) * scale_b,
               "wc": rng.standard_normal((2, 8, 1, 1)) * 0.1}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ca"], "conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ca"], ["a"], "relu_a"),
             helper.make_node("Conv", ["x", "wb"], ["cb"], "conv_b", pads=[1, 1, 1, 1]),
             helper.make_node(small, ["cb"], ["b"], "small_b"),
             helper.make_node("Concat", ["a", "b"], ["cat"], "concat", axis=1),
             helper.make_node("Conv", ["cat", "wc"], ["y"], "conv_c")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("cat", TensorProto.FLOAT, [1, 8, 8, 8]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds(seed: int, n: int = 32) -> list[dict[str, np.ndarray]]:
    """N(0, 1) inputs: 32, so that held-out values seldom pass the calibrated ranges (8 clipped Relu by 11%)."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8), dtype=np.float32)} for _ in range(n)]


def _cat_errors(proto: onnx.ModelProto, result: PipelineResult) -> list[float]:
    """The error of "cat"'s two slices (channels 0-3 from one Concat input, 4-7 from the other), as MAX_SLICE_ERROR."""
    held_out = _feeds(1, 8)
    ref = np.concatenate([o["cat"] for o in outputs(proto, held_out)])
    got = np.concatenate([o["cat"] for o in outputs(result.model, held_out)])
    return [float(np.abs(got[:, s] - ref[:, s]).max() / np.ptp(ref[:, s])) for s in (slice(0, 4), slice(4, 8))]


def test_mixed_range_concat_is_kept_float_and_recorded():
    proto = _concat_model("Sigmoid")
    result = _quantize(proto, _feeds(0))
    record = result.records[0]
    (kept,) = record.stats["float_concats"]
    assert kept["node"] == "concat" and kept["range_ratio"] > 100 and kept["kept_float_after"] == 1
    assert any(s["where"] == "concat" and "ranges differ" in s["reason"] for s in record.skips)
    nodes = {n.name: n for n in result.model.graph.node}
    made_by = {o: n for n in result.model.graph.node for o in n.output}
    # each input has its own scale; the Concat and the conv after it read float
    scales = [made_by[i].input[1] for i in nodes["concat"].input]
    assert all(made_by[i].op_type == "DequantizeLinear" for i in nodes["concat"].input) and len(set(scales)) == 2
    assert nodes["concat"].output[0] == "cat"
    assert not any(n.op_type == "QuantizeLinear" and "cat" in n.input for n in result.model.graph.node)
    assert nodes["conv_c"].input[1] == "wc"
    # on held-out feeds the 0-1 channels keep their resolution; with one shared scale they do not
    assert _cat_errors(proto, result)[1] <= MAX_SLICE_ERROR
    shared = _quantize(proto, _feeds(0), concat_range_ratio=float("inf"))
    assert "float_concats" not in shared.records[0].stats
    assert _cat_errors(proto, shared)[1] > 0.5


def test_similar_range_concat_stays_quantized():
    proto = _concat_model("Relu")
    result = _quantize(proto, _feeds(0))
    assert "float_concats" not in result.records[0].stats
    # ORT renames the Concat's output, which is now a QuantizeLinear's input ("cat" is the DequantizeLinear's)
    (concat,) = [n for n in result.model.graph.node if n.op_type == "Concat"]
    assert any(n.op_type == "QuantizeLinear" and concat.output[0] in n.input for n in result.model.graph.node)
    assert max(_cat_errors(proto, result)) <= MAX_SLICE_ERROR


def test_concat_range_ratio_below_one_names_the_option():
    with pytest.raises(ConfigError, match="concat_range_ratio must be 1 or more"):
        _quantize(_concat_model("Sigmoid"), _feeds(0), concat_range_ratio=0.5)


def test_yolo_det_class_scores_keep_their_own_scale():
    """yolo-det's output Concat (box pixels next to class probabilities) stays float.

    The class slice then has the Sigmoid's own 1/255 step and the Concat adds no error. Against fp32 on held-out
    feeds the max error per class channel is still far above 2%: the random-init backbone amplifies any
    perturbation (fp16-rounded weights alone give 4%, see bench/RESULTS.md, Mixed-range Concat), so that check
    is on the median error, which one shared scale put at 70% of each channel's range.
    """
    zoo = get_zoo_model("yolo-det")
    proto = onnx.load(str(zoo.onnx_path()))
    result = _quantize(proto, zoo.calibration(8))
    (kept,) = result.records[0].stats["float_concats"]
    assert kept["range_ratio"] > 100 and kept["kept_float_after"] == 0
    model = result.model
    concat = next(n for n in model.graph.node if n.name == kept["node"])
    assert concat.output[0] == "output0"
    made_by = {o: n for n in model.graph.node for o in n.output}
    classes = made_by[concat.input[-1]]
    scale = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == classes.input[1])
    assert classes.op_type == "DequantizeLinear" and float(scale) <= 1.01 / 255
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(concat.input[-1], TensorProto.FLOAT, None))
    held_out = zoo.calibration(8, "eval")
    got = outputs(probe, held_out)
    int8 = np.concatenate([o["output0"] for o in got])
    np.testing.assert_array_equal(int8[:, 4:], np.concatenate([o[concat.input[-1]] for o in got]))
    fp32 = np.concatenate([o["output0"] for o in outputs(proto, held_out)])
    assert _channel_errors(fp32[:, 4:], int8[:, 4:], 50).max() <= 0.2  # 0.10 measured; 0.71 with a shared scale
    assert min(len(np.unique(int8[:, c])) for c in range(4, 24)) >= 32  # 1 with a shared scale
