"""A device file on a host target: the search prices candidates and calibrates the model on its host timings.

The device file is this host's own sweep (``export_device_file("local", ...)``); the search runs on the
trained mnist-resnet (0.1 ms a run: digits-cnn's 13 us is too close to timer noise). No assertion depends on
what the timings were, only on how they were used.
"""

from __future__ import annotations

import hashlib
import json
import statistics

import onnx
import pytest
from click.testing import CliRunner

from edgec.compiler.cli import cli
from edgec.compiler.config import SEARCH_PASSES
from edgec.compiler.pipeline import run_pipeline
from edgec.compiler.search.evaluate import make_scorer
from edgec.compiler.search.latency_model import CalibratedLatency, LatencyModel, PredictedLatency
from edgec.compiler.search.objective import Objective
from edgec.compiler.search.orchestrate import SearchSettings, latency_source, run_search
from edgec.compiler.search.space import build_space
from edgec.compiler.sweep_models import load_sweep_models
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.devices import export_device_file
from edgec.runtime.devices.sweep import load_device_file
from edgec.targets.registry import get_target

REL = 1e-9  # calibration is arithmetic on the recorded pairs: only float rounding separates the figures


@pytest.fixture(scope="module")
def device_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("device") / "host.json"
    export_device_file("local", path, target="cpu-x86", models=load_sweep_models(["mnist-resnet"]),
                       max_per_op=10, runs=5, warmup=1)
    return str(path)


@pytest.fixture(scope="module")
def mnist():
    zoo = get_zoo_model("mnist-resnet")
    proto = onnx.load(str(zoo.onnx_path()))
    return proto, zoo.calibration(8)


def _pruned(proto: onnx.ModelProto, feeds, ratio: float) -> bytes:
    ctx = BuildContext(get_target("cpu-x86"), feeds[:2])
    return run_pipeline(proto, [create_pass("prune-channels", ctx, {"ratio": ratio})], ctx).model.SerializeToString()


def _check_rows(source: CalibratedLatency) -> None:
    """Each timed model's calibrated prediction is its measurement times the fitted scale over its own ratio.

    Its own ratio: measured over uncalibrated kernel time. Per precision and at the model's size, as
    ``LatencyModel.calibrate`` fits.
    """
    model = source.model
    for row, (proto, _, _) in zip(source.calibration["models"], source.timed.values(), strict=True):
        kernels = model._by_precision(proto)
        own = (row["measured_ms"] - model.overhead_ms) / (row["uncalibrated_ms"] - model.overhead_ms)
        size = sum(kernels.values())
        fitted = sum(model.scale_for(p, size) * ms for p, ms in kernels.items()) / size
        expected = (row["measured_ms"] - model.overhead_ms) * fitted / own + model.overhead_ms
        assert row["after_ms"] == pytest.approx(expected, rel=REL)


def test_a_host_target_with_a_device_file_is_priced_and_calibrated(device_file, mnist):
    proto, feeds = mnist
    original = proto.SerializeToString()
    warnings: list[str] = []
    source = latency_source(original, feeds[0], get_target("cpu-x86"), device_file, warnings)
    assert isinstance(source, CalibratedLatency) and source.measured and not warnings
    assert isinstance(latency_source(original, feeds[0], get_target("android-arm64"), device_file, warnings),
                      PredictedLatency)
    # Calibrated on the original alone: its prediction is its measurement.
    calibration = source.calibration
    assert calibration["pairs"] == 1 and calibration["models"][0]["model"] == "original"
    assert calibration["models"][0]["after_ms"] == pytest.approx(source.baseline_ms, rel=REL)
    _check_rows(source)

    pruned = _pruned(proto, feeds, 0.5)
    (first,) = source.ratios([pruned])  # new to the source: priced, not timed
    assert len(source.host.original_ms) == 1 and source.calibration["pairs"] == 1
    assert first == pytest.approx(source.model.predict(onnx.load_from_string(pruned)).total_ms
                                  / source.model.predict(proto).total_ms, rel=REL)
    assert 0 < first < 1  # half the channels pruned: cheaper in the kernel tables
    (again,) = source.ratios([pruned], min_rounds=5)  # asked again (a confirmation): timed, and calibrates
    assert len(source.host.original_ms) == 2 and source.calibration["pairs"] == 2
    rows = {r["model"]: r for r in source.calibration["models"]}
    row = rows[hashlib.sha256(pruned).hexdigest()]
    assert row["measured_ms"] == pytest.approx(again * source.baseline_ms, rel=REL)
    # What the search was told before the timing: the ratio priced under the original's calibration.
    assert row["before_ms"] == pytest.approx(first * source.host.original_ms[0], rel=REL)
    # Both fp32: one scale, the median (mean of two) of their ratios, so it over- and under-predicts one each.
    errors = sorted(r["after_ms"] / r["measured_ms"] for r in rows.values())
    assert errors[0] <= 1.0 + REL and errors[1] >= 1.0 - REL
    _check_rows(source)
    # The same pairs give the same scale to a fresh model: the search uses LatencyModel.calibrate as is.
    fresh = LatencyModel(load_device_file(device_file))
    assert fresh.calibrate(source.pairs()) == pytest.approx(source.model.scale, rel=REL)


def test_search_calibrates_on_the_original_and_every_confirmed_choice(device_file, mnist):
    proto, feeds = mnist
    target = get_target("cpu-x86")
    scorer = make_scorer(proto.SerializeToString(), feeds, None, "mnist-resnet")
    space = build_space(SEARCH_PASSES, proto, target)
    # A target every candidate meets: the choice is confirmed (timed) whatever the host's load.
    settings = SearchSettings(Objective(latency_ms=1000.0), budget=4, workers=1, device_file=device_file)
    result = run_search(proto, space, settings, target=target, calibration=feeds, scorer=scorer)
    source = result.latency
    assert isinstance(source, CalibratedLatency)
    assert result.latency_source.startswith("predicted for device local") and "calibrated" in result.latency_source
    assert result.confirmations, "a latency target confirms its choice"
    calibration = source.calibration
    timed = {r["model"] for r in calibration["models"]}
    original = hashlib.sha256(proto.SerializeToString()).hexdigest()
    confirmed = {c["digest"] if c["digest"] != original else "original" for c in result.confirmations}
    assert calibration["pairs"] >= 1 and timed == {"original"} | confirmed
    fresh = LatencyModel(load_device_file(device_file))  # the recorded pairs refit from scratch
    assert fresh.calibrate(source.pairs()) == pytest.approx(calibration["scale"], rel=REL)
    assert calibration["scale"] > 0 and fresh.scales == pytest.approx(calibration["scales"], rel=REL)
    _check_rows(source)
    # The confirmed choice's latency is the mean of its predicted and measured ratios, on the measured baseline.
    held = {c["digest"]: c for c in result.confirmations}
    if result.chosen.model_digest in held:
        confirmation = held[result.chosen.model_digest]
        mean = (confirmation["search_ratio"] + confirmation["again_ratio"]) / 2
        assert result.chosen.latency_ms == pytest.approx(mean * result.baseline_ms, rel=REL)
    assert result.baseline_ms == pytest.approx(statistics.median(source.host.original_ms), rel=REL)


def test_the_manifest_reports_the_calibration(device_file, tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(cli, ["build", "zoo:mnist-resnet", "--target", "cpu-x86", "-o", str(out), "--json",
                                      "--latency-ms", "1000", "--budget", "2", "--device-file", device_file])
    assert result.exit_code == 0, result.stderr
    search = json.loads(result.stdout)["metrics"]["search"]
    calibration = search["latency_calibration"]
    assert calibration["pairs"] == len(calibration["models"]) >= 1 and calibration["scale"] > 0
    original = calibration["models"][0]
    assert original["model"] == "original" and original["timings"] >= 1
    if original["timings"] == 1:  # not confirmed itself: measured as the search's baseline
        assert original["measured_ms"] == pytest.approx(search["original"]["latency_ms"], rel=REL)
    assert search["chosen"]["latency_ms"]["predicted_by"] == search["latency_source"]
    # Refit from the reported figures: the original is fp32, so with it alone the scale is its own ratio.
    if calibration["pairs"] == 1:
        row = calibration["models"][0]
        own = (row["measured_ms"] - calibration["overhead_ms"]) / (row["uncalibrated_ms"] - calibration["overhead_ms"])
        assert calibration["scale"] == pytest.approx(own, rel=1e-6) and row["after_ms"] == pytest.approx(
            row["measured_ms"], rel=1e-6)
