"""The latency model reads a device file made on this host and prices every node of a zoo model."""

from __future__ import annotations

import onnx
import pytest

from edgec.compiler.search.latency_model import LatencyModel, model_features
from edgec.models.zoo import get_zoo_model
from edgec.runtime.devices import export_device_file
from edgec.runtime.devices.sweep import load_device_file


@pytest.fixture(scope="module")
def latency_model(tmp_path_factory) -> LatencyModel:
    path = tmp_path_factory.mktemp("device") / "host.json"
    export_device_file("local", path, target="cpu-x86", models=["mnist-resnet"], max_per_op=10, runs=5, warmup=1)
    return LatencyModel(load_device_file(path))


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


def test_qdq_conv_is_priced_as_int8():
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    zoo = get_zoo_model("digits-cnn")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(zoo.calibration(2))

        def get_next(self):
            return next(self.feeds, None)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(zoo.onnx_path()), str(out), Reader(), quant_format=QuantFormat.QDQ)
        features = model_features(onnx.load(str(out)))
    precisions = {f.op_class[1] for f in features if f.op_class[0] == "Conv"}
    assert precisions == {"int8"}
    assert not any(f.op_class[0] in ("QuantizeLinear", "DequantizeLinear") for f in features)
