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
from edgec.core.errors import BundleError
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


# --- sequences and optionals ----------------------------------------------------------------------------

BIAS = np.array([0.5, -1.0, 2.0], np.float32)


def _sequence_model() -> onnx.ModelProto:
    """y = xs[0] * 1 + bias (cleanup folds the * 1), ys = xs with y appended: a sequence in, a sequence out."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("SequenceAt", ["xs", "zero"], ["first"]),
             helper.make_node("Mul", ["first", "one"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["y"]),
             helper.make_node("SequenceInsert", ["xs", "y"], ["ys"])]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("bias", TensorProto.FLOAT, [3], BIAS.tolist())]
    graph = helper.make_graph(nodes, "seq",
                              [helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
                               helper.make_tensor_sequence_value_info("ys", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _build_cli(tmp_path, target: str):
    from click.testing import CliRunner

    from edgec.compiler.cli import cli

    onnx.save(_sequence_model(), tmp_path / "model.onnx")
    xs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.full((1, 3), -4.0, np.float32)]
    np.savez(tmp_path / "x.npz", **{"xs/0": xs[0], "xs/1": xs[1]})
    out = tmp_path / f"bundle-{target}"
    result = CliRunner().invoke(cli, ["build", str(tmp_path / "model.onnx"), "--target", target, "--passes",
                                      "cleanup,fuse", "--calib", str(tmp_path / "x.npz"), "-o", str(out), "--quiet"],
                                catch_exceptions=False)
    return result, out, xs


def test_sequence_io_built_and_verified_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from edgec.compiler.cli import cli

    result, out, xs = _build_cli(tmp_path, "cpu-x86")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "xs", "shape": ["n", 3], "dtype": "float32", "kind": "sequence"}]
    assert manifest["outputs"] == [{"name": "y", "shape": ["n", 3], "dtype": "float32"},
                                   {"name": "ys", "shape": ["n", 3], "dtype": "float32", "kind": "sequence"}]
    assert manifest["samples"] == [{"file": "sample.npz", "input_shapes": {"xs": [[2, 3], [1, 3]]}}]
    with np.load(out / "sample.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["input/xs/0", "input/xs/1", "output/y", "output/ys/0", "output/ys/1",
                                     "output/ys/2"]
    loaded = load_bundle(out)
    assert [a.shape for a in loaded.sample_inputs["xs"]] == [(2, 3), (1, 3)]
    np.testing.assert_array_equal(loaded.sample_inputs["xs"][1], xs[1])
    # The stored outputs are the model's: y = xs[0] + bias, ys = xs + [y].
    np.testing.assert_allclose(loaded.sample_outputs["y"], xs[0] + BIAS, rtol=0, atol=1e-6)
    assert [a.shape for a in loaded.sample_outputs["ys"]] == [(2, 3), (1, 3), (2, 3)]
    np.testing.assert_allclose(loaded.sample_outputs["ys"][2], xs[0] + BIAS, rtol=0, atol=1e-6)
    got = run(loaded.session, loaded.sample_inputs)
    np.testing.assert_allclose(got["y"], loaded.sample_outputs["y"], rtol=0, atol=1e-6)
    for have, want in zip(got["ys"], loaded.sample_outputs["ys"], strict=True):
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-6)
    assert [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node] == ["SequenceAt", "Add",
                                                                                   "SequenceInsert"]
    verified = CliRunner().invoke(cli, ["verify", str(out)])
    assert verified.exit_code == 0, verified.stdout
    assert "sample sample.npz: xs [2x3, 1x3]: 2 output(s), max abs 0" in verified.stdout
    with pytest.raises(BundleError, match=r"input 'xs' is a sequence: device runs take tensors only"):
        loaded.check_tensor_io("device runs")


def test_mobile_target_refuses_sequence_io_naming_the_input(tmp_path):
    result, out, _ = _build_cli(tmp_path, "android-arm64")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: input 'xs' is a sequence: android-arm64 bundles are fed by app loaders that take tensors only; "
        "build for a host target such as cpu-x86"]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _optional_model() -> onnx.ModelProto:
    """t = Identity(t_opt), s = Identity(s_opt): optional inputs passed to optional outputs."""
    from onnx import TensorProto, helper

    opt_tensor = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [3]))
    opt_seq = helper.make_optional_type_proto(helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.INT64, [None])))
    graph = helper.make_graph([helper.make_node("Identity", ["t_opt"], ["t"]),
                               helper.make_node("Identity", ["s_opt"], ["s"])], "opt",
                              [helper.make_value_info("t_opt", opt_tensor), helper.make_value_info("s_opt", opt_seq)],
                              [helper.make_value_info("t", opt_tensor), helper.make_value_info("s", opt_seq)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("fmt", ["dir", "zip"])
def test_absent_optionals_and_empty_sequences_round_trip(tmp_path, fmt):
    samples = [{"t_opt": None, "s_opt": []}, {"t_opt": np.ones(3, np.float32), "s_opt": None},
               {"t_opt": None, "s_opt": [np.arange(2), np.arange(5)]}]
    out = write_bundle(tmp_path / f"b.{fmt}", model=_optional_model(), target=get_target("cpu-x86"),
                       sample_inputs=samples[0], extra_samples=samples[1:], fmt=fmt)
    loaded = load_bundle(out)
    specs = loaded.manifest["inputs"] + loaded.manifest["outputs"]
    assert [(s["kind"], s["element_kind"], s["dtype"]) for s in specs] == [
        ("optional", "tensor", "float32"), ("optional", "sequence", "int64")] * 2
    assert [s["input_shapes"] for s in loaded.manifest["samples"]] == [
        {"t_opt": None, "s_opt": []}, {"t_opt": [3], "s_opt": None}, {"t_opt": None, "s_opt": [[2], [5]]}]
    assert loaded.sample_inputs == {"t_opt": None, "s_opt": []}
    assert loaded.sample_outputs == {"t": None, "s": []}
    with zipfile.ZipFile(out) if out.is_file() else contextlib.nullcontext() as zf:
        data = zf.read("sample.npz") if zf else (out / "sample.npz").read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # absent: no key; empty: the marker
        assert sorted(npz.files) == ["input/s_opt/__empty__", "output/s/__empty__"]
        assert npz["input/s_opt/__empty__"].dtype == np.int64 and npz["input/s_opt/__empty__"].size == 0
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert [c.detail.split(":")[0] for c in report.checks if c.name.startswith("sample")] == [
        "t_opt absent, s_opt []", "t_opt 3, s_opt absent", "t_opt absent, s_opt [2, 5]"]


def test_an_absent_optional_output_differs_from_a_present_one():
    from edgec.runtime.session import compare_outputs

    (same,) = compare_outputs([{"t": None}], [{"t": None}])
    (absent,) = compare_outputs([{"t": None}], [{"t": []}])
    (present,) = compare_outputs([{"t": np.zeros(0, np.float32)}], [{"t": None}])
    assert same.max_abs == 0 and absent.max_abs == present.max_abs == float("inf")


def test_sample_values_must_fit_their_kind(tmp_path):
    model, target = _optional_model(), get_target("cpu-x86")
    with pytest.raises(BundleError, match=r"sample input 's_opt' is an optional sequence: expected a list of arrays"):
        write_bundle(tmp_path / "b", model=model, target=target, sample_inputs={"s_opt": np.arange(3)})
    with pytest.raises(BundleError, match=r"sample input 's_opt' element 1 is int32, the model takes int64"):
        write_bundle(tmp_path / "b", model=model, target=target,
                     sample_inputs={"s_opt": [np.arange(3), np.arange(2, dtype=np.int32)]})
    assert list(tmp_path.iterdir()) == []


def test_manifest_kind_is_checked_and_string_samples_need_no_pickle(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, [2])])
    out = write_bundle(tmp_path / "b", model=helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                       target=get_target("cpu-x86"), sample_inputs={"s": np.array(["a", "bc"], dtype=object)})
    loaded = load_bundle(out)  # stored as unicode, read back as ONNX strings (object arrays)
    assert loaded.sample_inputs["s"].dtype == object and loaded.sample_outputs["t"].tolist() == ["a", "bc"]
    assert verify_bundle(out).ok
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["inputs"][0]["kind"] = "map"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json: input 's' has kind 'map', element_kind None; expected kind "
                                          "tensor/sequence/optional"):
        load_bundle(out)
