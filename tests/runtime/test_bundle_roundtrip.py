"""Bundles written, loaded and verified end to end: dir and zip, desktop and mobile targets."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgec import runtime
from edgec.compiler.errors import BundleError
from edgec.runtime.bundle import REQUIRED_KEYS, write_bundle
from edgec.runtime.loader import load_bundle, verify_bundle
from edgec.runtime.session import make_session, run
from edgec.targets.registry import get_target


def _direct(model: onnx.ModelProto, feeds: dict[str, np.ndarray], level: str) -> dict[str, np.ndarray]:
    """The model run straight from memory in ORT, independent of the bundle code."""
    return run(make_session(model.SerializeToString(), level=level), feeds)


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory, tiny_model, tiny_feeds):
    out = tmp_path_factory.mktemp("android") / "bundle"
    records = [{"name": "cleanup", "modified": True, "stats": {"nodes_removed": np.int64(0)}}]
    metrics = {"accuracy_before": 0.91, "accuracy_after": 0.91, "latency_ms": {"p50": np.float64(0.2)}}
    return write_bundle(out, model=tiny_model, target=get_target("android-arm64"), sample_inputs=tiny_feeds,
                        pass_records=records, metrics=metrics)


def test_dir_bundle_round_trip(tmp_path, tiny_model, tiny_feeds):
    out = write_bundle(tmp_path / "cpu", model=tiny_model, target=get_target("cpu-x86"),
                       sample_inputs=tiny_feeds)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "sample.npz"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(REQUIRED_KEYS) <= set(manifest)
    assert manifest["model_file"] == "model.onnx" and manifest["target"]["name"] == "cpu-x86"
    assert manifest["inputs"] == [{"name": "input.1", "shape": ["N", 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "probs", "shape": ["N", 10], "dtype": "float32"}]
    assert set(manifest["files"]) == {"model.onnx", "sample.npz"}
    assert manifest["samples"] == [{"file": "sample.npz", "input_shapes": {"input.1": [2, 3, 16, 16]}}]
    assert manifest["distinct_sample_shapes"] == 1
    assert manifest["onnxruntime_version"] == ort.__version__

    loaded = runtime.load(out)
    np.testing.assert_array_equal(loaded.sample_inputs["input.1"], tiny_feeds["input.1"])
    got = run(loaded.session, loaded.sample_inputs)
    np.testing.assert_allclose(got["probs"], loaded.sample_outputs["probs"], atol=1e-6, rtol=0)
    # The stored outputs are the model's real outputs, not something the bundle code made up.
    direct = _direct(tiny_model, tiny_feeds, "all")
    np.testing.assert_allclose(got["probs"], direct["probs"], atol=1e-6, rtol=0)
    assert np.allclose(got["probs"].sum(axis=1), 1.0, atol=1e-5)
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.sample_errors[0].max_abs <= 1e-6


def test_zip_bundle_round_trip(tmp_path, tiny_model, tiny_feeds):
    out = write_bundle(tmp_path / "ios.zip", model=tiny_model, target=get_target("ios-arm64"),
                       sample_inputs=tiny_feeds, fmt="zip")
    assert out.is_file()
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert names == {"manifest.json", "model.onnx", "model.ort", "required_operators.config", "sample.npz",
                     "EdgecModel.swift"}
    loaded = load_bundle(out)
    assert loaded.manifest["model_file"] == "model.ort"
    got = run(loaded.session, loaded.sample_inputs)
    np.testing.assert_allclose(got["probs"], loaded.sample_outputs["probs"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["probs"], _direct(tiny_model, tiny_feeds, "extended")["probs"], atol=1e-6,
                               rtol=0)
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert [c.name for c in report.checks] == ["schema", "files", "load", "sample sample.npz",
                                               "model.ort vs model.onnx (extended)"]
    # model_bytes reads from the zip and re-checks the checksum.
    assert onnx.load_from_string(loaded.model_bytes("model.onnx")).graph.name == "tiny"
    assert loaded.model_bytes() == zipfile.ZipFile(out).read("model.ort")


def test_android_bundle_ships_ort_matching_onnx(android_bundle, tiny_feeds):
    names = {p.name for p in android_bundle.iterdir()}
    assert {"model.onnx", "model.ort", "required_operators.config", "EdgecModel.kt"} <= names
    manifest = json.loads((android_bundle / "manifest.json").read_text())
    assert manifest["model_file"] == "model.ort"
    assert manifest["model_files"] == {"onnxruntime": "model.onnx", "onnxruntime-mobile": "model.ort"}
    assert manifest["execution_providers"][0] == "NnapiExecutionProvider"
    assert manifest["session_options"] == {"graph_optimization_level": "extended", "intra_op_num_threads": 2,
                                           "ort_optimization_style": "Runtime"}
    assert manifest["passes"][0]["stats"]["nodes_removed"] == 0
    assert manifest["metrics"]["latency_ms"]["p50"] == pytest.approx(0.2)
    config = (android_bundle / "required_operators.config").read_text()
    assert "com.microsoft;1;FusedConv" in config and "Softmax" in config
    assert "# - model.ort" in config and "tmp" not in config

    ort_out = run(make_session(android_bundle / "model.ort", level="extended"), tiny_feeds)
    onnx_out = run(make_session(android_bundle / "model.onnx", level="extended"), tiny_feeds)
    np.testing.assert_allclose(ort_out["probs"], onnx_out["probs"], atol=1e-7, rtol=0)
    report = verify_bundle(android_bundle)
    assert report.ok, report.problems
    assert report.ort_vs_onnx_errors[0].max_abs <= 1e-6


def test_kotlin_sample_names_model_io(android_bundle):
    kotlin = (android_bundle / "EdgecModel.kt").read_text()
    assert "OrtEnvironment.getEnvironment()" in kotlin and "addNnapi()" in kotlin
    assert 'const val INPUT_INPUT_1 = "input.1"' in kotlin
    assert "val SHAPE_INPUT_1 = longArrayOf(2L, 3L, 16L, 16L)" in kotlin
    assert 'const val OUTPUT_PROBS = "probs"' in kotlin
    assert 'assetName: String = "model.ort"' in kotlin
    assert "OptLevel.EXTENDED_OPT" in kotlin and "setIntraOpNumThreads(2)" in kotlin
    assert "{{" not in kotlin


def test_swift_sample_names_model_io(tmp_path, tiny_model, tiny_feeds):
    out = write_bundle(tmp_path / "ios", model=tiny_model, target=get_target("ios-arm64"),
                       sample_inputs=tiny_feeds)
    swift = (out / "EdgecModel.swift").read_text()
    assert "ORTEnv(" in swift and "appendCoreMLExecutionProvider" in swift and "ORTSession(" in swift
    assert '"input.1": try EdgecModel.tensor(input_1, .float, EdgecModel.shape_input_1)' in swift
    assert "static let shape_input_1: [NSNumber] = [2, 3, 16, 16]" in swift
    assert 'static let outputNames: [String] = ["probs"]' in swift
    assert 'resource: String = "model", ext: String = "ort"' in swift
    assert "coreml.createMLProgram = true" in swift  # the ios profile targets CoreML ML Program
    assert "{{" not in swift


def test_sample_inputs_must_match_model(tmp_path, tiny_model, tiny_feeds):
    with pytest.raises(BundleError, match="'input.1'"):
        write_bundle(tmp_path / "b", model=tiny_model, target=get_target("cpu-x86"), sample_inputs={})
    wrong = {"input.1": tiny_feeds["input.1"].astype(np.float64)}
    with pytest.raises(BundleError, match="float64"):
        write_bundle(tmp_path / "b", model=tiny_model, target=get_target("cpu-x86"), sample_inputs=wrong)
    assert list(tmp_path.iterdir()) == []


def test_quantized_android_bundle_ships_fixed_style_ort(tmp_path, tiny_model, tiny_feeds):
    # ORT 1.32 cannot replay saved runtime optimizations of QDQ graphs, so the writer fixes them.
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([tiny_feeds])

        def get_next(self):
            return next(self.feeds, None)

    onnx.save(tiny_model, tmp_path / "fp32.onnx")
    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    out = write_bundle(tmp_path / "b", model=int8, target=get_target("android-arm64"), sample_inputs=tiny_feeds)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["session_options"]["ort_optimization_style"] == "Fixed"
    report = verify_bundle(out)
    assert report.ok, report.problems


def _batches(*sizes: int) -> list[dict[str, np.ndarray]]:
    """Samples for the tiny classifier (batch dim symbolic), one per batch size, each with its own values."""
    rng = np.random.default_rng(7)
    return [{"input.1": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)} for n in sizes]


@pytest.mark.parametrize(("target", "name"), [("cpu-x86", "cpu"), ("android-arm64", "android.zip")])
def test_one_sample_per_distinct_input_shape(tmp_path, tiny_model, target, name):
    feeds = _batches(2, 1, 2, 3, 1)  # three shapes; the repeats are not stored
    out = write_bundle(tmp_path / name, model=tiny_model, target=get_target(target), sample_inputs=feeds[0],
                       extra_samples=feeds[1:], fmt="zip" if name.endswith(".zip") else "dir")
    loaded = load_bundle(out)
    files = ["sample.npz", "samples/1.npz", "samples/2.npz"]
    assert [s["file"] for s in loaded.manifest["samples"]] == files
    assert [s["input_shapes"]["input.1"][0] for s in loaded.manifest["samples"]] == [2, 1, 3]
    assert loaded.manifest["distinct_sample_shapes"] == 3 and set(files) <= set(loaded.manifest["files"])
    np.testing.assert_array_equal(loaded.sample_inputs["input.1"], feeds[0]["input.1"])
    level = loaded.manifest["session_options"]["graph_optimization_level"]
    with zipfile.ZipFile(out) if out.is_file() else contextlib.nullcontext() as zf:
        for rel, sample in zip(files, [feeds[0], feeds[1], feeds[3]], strict=True):
            data = zf.read(rel) if zf else (out / rel).read_bytes()
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                np.testing.assert_array_equal(npz["input/input.1"], sample["input.1"])
                # Each sample's stored outputs are the model's real outputs at that shape.
                np.testing.assert_allclose(npz["output/probs"], _direct(tiny_model, sample, level)["probs"],
                                           atol=1e-6, rtol=0)
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert [c.name for c in report.checks if c.name.startswith("sample")] == [f"sample {f}" for f in files]
    assert [c.detail.split(":")[0] for c in report.checks if c.name.startswith("sample")] == [
        "input.1 2x3x16x16", "input.1 1x3x16x16", "input.1 3x3x16x16"]
    assert sorted(report.sample_errors_by_file) == files
    assert all(e.max_abs <= 1e-6 for errors in report.sample_errors_by_file.values() for e in errors)
    if target == "android-arm64":
        assert report.checks[-1].name == "model.ort vs model.onnx (extended)"
        assert report.checks[-1].detail.startswith("3 sample(s):")


def test_samples_are_capped_and_the_manifest_says_how_many_shapes(tmp_path, tiny_model):
    feeds = _batches(*range(1, 11))
    out = write_bundle(tmp_path / "b", model=tiny_model, target=get_target("cpu-x86"), sample_inputs=feeds[0],
                       extra_samples=feeds[1:])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["input_shapes"]["input.1"][0] for s in manifest["samples"]] == list(range(1, 9))
    assert manifest["distinct_sample_shapes"] == 10
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"{i}.npz" for i in range(1, 8)]


def test_bundle_from_before_the_samples_list_still_loads(tmp_path, tiny_model, tiny_feeds):
    out = write_bundle(tmp_path / "old", model=tiny_model, target=get_target("cpu-x86"), sample_inputs=tiny_feeds)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["samples"], manifest["distinct_sample_shapes"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    np.testing.assert_array_equal(load_bundle(out).sample_inputs["input.1"], tiny_feeds["input.1"])
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert [c.name for c in report.checks if c.name.startswith("sample")] == ["sample sample.npz"]


def test_extra_sample_that_does_not_fit_the_model_is_refused(tmp_path, tiny_model, tiny_feeds):
    wrong = {"input.1": tiny_feeds["input.1"].astype(np.float64)}
    with pytest.raises(BundleError, match="float64"):
        write_bundle(tmp_path / "b", model=tiny_model, target=get_target("cpu-x86"), sample_inputs=tiny_feeds,
                     extra_samples=[wrong])
    four_channels = {"input.1": np.zeros((1, 4, 16, 16), np.float32)}  # the model takes 3
    with pytest.raises(BundleError, match=r"model.onnx: fails on the sample with input.1 1x4x16x16: "):
        write_bundle(tmp_path / "b", model=tiny_model, target=get_target("cpu-x86"), sample_inputs=tiny_feeds,
                     extra_samples=[four_channels])
    assert list(tmp_path.iterdir()) == []
