"""The latency model reads a device file made on this host and prices every node of a zoo model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.compiler.pipeline import run_pipeline
from edgec.compiler.search.latency_model import (
    LatencyModel,
    _conv_kind,
    _fit,
    _kernel_ms,
    model_features,
    scaled_conv_model,
)
from edgec.compiler.sweep_models import load_sweep_models
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.devices import export_device_file
from edgec.runtime.devices._microbench import specs_from_model
from edgec.runtime.devices.sweep import load_device_file
from edgec.runtime.session import make_session
from edgec.targets.registry import get_target


@pytest.fixture(scope="module")
def latency_model(tmp_path_factory) -> LatencyModel:
    path = tmp_path_factory.mktemp("device") / "host.json"
    export_device_file("local", path, target="cpu-x86", models=load_sweep_models(["mnist-resnet"]),
                       max_per_op=10, runs=5, warmup=1)
    return LatencyModel(load_device_file(path))


@pytest.fixture(scope="module")
def qdq_digits(tmp_path_factory) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    zoo = get_zoo_model("digits-cnn")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(zoo.calibration(2))

        def get_next(self):
            return next(self.feeds, None)

    out = tmp_path_factory.mktemp("qdq") / "q.onnx"
    quantize_static(str(zoo.onnx_path()), str(out), Reader(), quant_format=QuantFormat.QDQ)
    return onnx.load(str(out))


def test_device_file_feeds_predictions_for_every_node(latency_model):
    model = onnx.load(str(get_zoo_model("mnist-resnet").onnx_path()))
    prediction = latency_model.predict(model)
    names = {f.name for f in model_features(model)}
    assert set(prediction.per_node_ms) == names
    assert prediction.covered >= 0.8  # the sweep measured this model's own op classes
    assert prediction.total_ms > 0 and all(ms >= 0 for ms in prediction.per_node_ms.values())
    conv_classes = {f.op_class for f in model_features(model) if f.op_class[0] == "Conv"}
    assert conv_classes <= set(latency_model.fits)


def test_calibration_scales_node_times_to_measurements(latency_model):
    model = onnx.load(str(get_zoo_model("mnist-resnet").onnx_path()))
    base = latency_model.predict(model).total_ms - latency_model.overhead_ms
    measured = 3.0 * base + latency_model.overhead_ms
    assert latency_model.calibrate([(model, measured)]) == pytest.approx(3.0)
    assert latency_model.predict(model).total_ms == pytest.approx(measured)
    latency_model.calibrate([])
    assert latency_model.scale == 1.0 and latency_model.scales == {}


def test_int8_measurement_gets_its_own_scale(latency_model, qdq_digits):
    fp32 = onnx.load(str(get_zoo_model("digits-cnn").onnx_path()))
    overhead = latency_model.overhead_ms
    fp32_ms = 2.0 * (latency_model.predict(fp32).total_ms - overhead) + overhead
    int8_ms = 5.0 * (latency_model.predict(qdq_digits).total_ms - overhead) + overhead
    assert latency_model.calibrate([(fp32, fp32_ms), (qdq_digits, int8_ms)]) == pytest.approx(2.0)
    assert latency_model.scales["int8"] > 2.0
    assert latency_model.predict(fp32).total_ms == pytest.approx(fp32_ms)
    assert latency_model.predict(qdq_digits).total_ms == pytest.approx(int8_ms)
    latency_model.calibrate([])


def _kernel_size(latency_model: LatencyModel, model: onnx.ModelProto) -> float:
    return latency_model.predict(model).total_ms - latency_model.overhead_ms


def test_calibration_fits_a_size_exponent_once_the_measured_models_span_sizes(latency_model):
    big = onnx.load(str(get_zoo_model("mnist-resnet").onnx_path()))
    ctx = BuildContext(get_target("cpu-x86"), get_zoo_model("mnist-resnet").calibration(2))
    small = run_pipeline(big, [create_pass("prune-channels", ctx, {"ratio": 0.6})], ctx).model
    latency_model.calibrate([])
    sizes = {"big": _kernel_size(latency_model, big), "small": _kernel_size(latency_model, small)}
    assert sizes["big"] / sizes["small"] >= 1.25
    # Measured = 2 * size^0.9: smaller models run at a higher multiple of their tables, as pruned ones do.
    measured = {k: 2.0 * size**0.9 + latency_model.overhead_ms for k, size in sizes.items()}
    latency_model.calibrate([(big, measured["big"]), (small, measured["small"])])
    assert latency_model.precision_scales["fp32"].exponent == pytest.approx(-0.1, abs=1e-6)
    assert latency_model.predict(big).total_ms == pytest.approx(measured["big"])
    assert latency_model.predict(small).total_ms == pytest.approx(measured["small"])
    # One measured model, or sizes closer than MIN_SIZE_SPAN: one factor for every size, as before.
    latency_model.calibrate([(big, measured["big"]), (big, measured["big"] * 1.02)])
    assert latency_model.precision_scales["fp32"].exponent == 0.0
    # A steep trend from two noisy pairs is clipped, not extrapolated.
    latency_model.calibrate([(big, measured["big"]), (small, measured["small"] * 3.0)])
    assert abs(latency_model.precision_scales["fp32"].exponent) <= 0.33
    latency_model.calibrate([])
    assert latency_model.precision_scales == {}


def test_qdq_conv_is_priced_as_int8(qdq_digits):
    features = model_features(qdq_digits)
    precisions = {f.op_class[1] for f in features if f.op_class[0] == "Conv"}
    assert precisions == {"int8"}
    assert not any(f.op_class[0] in ("QuantizeLinear", "DequantizeLinear") for f in features)


def test_ort_fusions_cost_nothing_of_their_own():
    resnet = model_features(onnx.load(str(get_zoo_model("resnet18").onnx_path())))
    assert all(f.fused for f in resnet if f.op_class[0] in ("Relu", "Add"))  # FusedConv / NCHWc Conv+sum+Relu
    assert not any(f.fused for f in resnet if f.op_class[0] == "Conv")
    effnet = model_features(onnx.load(str(get_zoo_model("efficientnet-b0").onnx_path())))
    sigmoids = [f for f in effnet if f.op_class[0] == "Sigmoid"]
    muls = [f for f in effnet if f.op_class[0] == "Mul"]
    # SiLU x*Sigmoid(x) runs as one QuickGelu kernel: its Mul is free, its Sigmoid carries the cost;
    # the squeeze-excitation gate (Conv -> Sigmoid) fuses into its Conv.
    assert sum(f.fused for f in muls) == 49 and sum(not f.fused for f in sigmoids) == 49
    assert sum(f.fused for f in sigmoids) == 16


def test_micro_benchmark_glue_is_not_charged_to_the_op():
    entry = {"op_type": "Conv", "kernel_ms": 0.05, "nodes": [
        {"op_type": "Conv", "total_ms": 0.03}, {"op_type": "ReorderInput", "total_ms": 0.01},
        {"op_type": "ReorderOutput", "total_ms": 0.01}]}
    assert _kernel_ms(entry) == pytest.approx(0.03)
    qdq = {"op_type": "Conv", "kernel_ms": 0.02, "nodes": [
        {"op_type": "QLinearConv", "total_ms": 0.012}, {"op_type": "QuantizeLinear", "total_ms": 0.004},
        {"op_type": "Transpose", "total_ms": 0.004}]}
    assert _kernel_ms(qdq) == pytest.approx(0.012)


def test_conv_kind_marks_widths_off_the_nchwc_block():
    assert _conv_kind([64, 64, 3, 3], 1, 64) == "dense"
    assert _conv_kind([48, 40, 1, 1], 1, 40) == "pointwise-unblocked"
    assert _conv_kind([64, 3, 7, 7], 1, 3) == "dense"  # an image stem reads 3 channels as plain NCHW
    assert _conv_kind([40, 1, 3, 3], 40, 40) == "depthwise-unblocked"


def test_fit_recovers_a_linear_kernel_cost():
    rng = np.random.default_rng(0)
    truth = np.array([2e-9, 5e-8, 3e-3])
    points = [(f, b, float(truth @ [f, b, 1.0])) for f, b in zip(rng.uniform(1e5, 1e8, 12),
                                                                    rng.uniform(1e4, 1e6, 12), strict=True)]
    coef = _fit(points)
    predicted = [float(coef @ [f, b, 1.0]) for f, b, _ in points]
    np.testing.assert_allclose(predicted, [ms for *_, ms in points], rtol=1e-6)
    assert (coef >= 0).all()


def test_scaled_conv_model_is_a_valid_sweep_source():
    model = onnx.load(str(get_zoo_model("mnist-resnet").onnx_path()))
    scaled = scaled_conv_model(model, 0.5)
    onnx.checker.check_model(scaled, full_check=True)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    specs = specs_from_model(scaled, "scaled")
    assert len(specs) == len(convs)
    for spec in specs:
        x, w = spec.inputs[0][1], spec.inputs[1][1]
        assert w[0] % 8 == 0 and (x[1] <= 4 or x[1] % 8 == 0)
    session = make_session(scaled.SerializeToString())
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
             for i in scaled.graph.input}
    assert len(session.run(None, feeds)) == len(convs)


def test_pruned_configuration_is_predicted_faster(latency_model):
    zoo = get_zoo_model("mnist-resnet")
    proto = onnx.load(str(zoo.onnx_path()))
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(2))
    pruned = run_pipeline(proto, [create_pass("prune-channels", ctx, {"ratio": 0.5})], ctx).model
    before, after = latency_model.predict(proto), latency_model.predict(pruned)
    # Every Conv of the pruned model has a fitted class; its channel-selection Slices are costed by bandwidth.
    assert all(latency_model.node_ms(f)[1] for f in model_features(pruned) if f.op_class[0] == "Conv")
    assert 0.0 < after.total_ms < before.total_ms
