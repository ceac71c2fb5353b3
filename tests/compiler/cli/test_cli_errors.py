"""Bad input: exit code 2, one line naming the file, node or option at fault, and nothing written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.compiler import pipeline
from edgec.compiler.cli import cli


def _build(runner, model, out, *extra):
    return runner.invoke(cli, ["build", str(model), "--target", "cpu-x86", "-o", str(out), "--quiet", *extra])


def _assert_user_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], list(out.parent.iterdir())


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "outdir"
    folder.mkdir()
    return folder / "bundle"


def test_missing_model_path(runner, out):
    _assert_user_error(_build(runner, out.parent / "nope.onnx", out, "--calib", "random"), "nope.onnx")
    _assert_nothing_written(out)


def test_not_onnx_file(runner, tmp_path, out):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a protobuf")
    _assert_user_error(_build(runner, bogus, out, "--calib", "random"), "notes.onnx")
    _assert_nothing_written(out)


def test_truncated_model(runner, tiny_onnx, tmp_path, out):
    cut = tmp_path / "cut.onnx"
    data = tiny_onnx.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _assert_user_error(_build(runner, cut, out, "--calib", "random"), "cut.onnx")
    _assert_nothing_written(out)


def test_external_data_outside_model_folder(runner, tiny_onnx, tmp_path, out):
    model = onnx.load(str(tiny_onnx))
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(model, str(folder / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    escaped = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    for tensor in escaped.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (folder / "weights.bin").rename(tmp_path / "weights.bin")
    onnx.save(escaped, str(folder / "ext.onnx"))
    _assert_user_error(_build(runner, folder / "ext.onnx", out, "--calib", "random"), "ext.onnx", "../weights.bin")
    _assert_nothing_written(out)


def test_op_the_target_cannot_run(runner, tmp_path, out):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], name="frob1", domain="acme.ops")],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.ops", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    _assert_user_error(_build(runner, path, out, "--calib", "random"), "frob1", "acme.ops:Frobnicate", "cpu-x86")
    _assert_nothing_written(out)


def test_malformed_input_shape(runner, tiny_onnx, out):
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", "random", "--input-shape", "x=1xthree"),
                       "--input-shape", "x=1xthree")
    _assert_nothing_written(out)


def test_calibration_with_wrong_input_name(runner, tiny_onnx, tmp_path, out):
    npz = tmp_path / "calib.npz"
    np.savez(npz, image=np.zeros((1, 3, 16, 16), np.float32))
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", str(npz)), "calib.npz", "x")
    _assert_nothing_written(out)


def test_calibration_with_wrong_shape(runner, tiny_onnx, tmp_path, out):
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.zeros((1, 3, 8, 8), np.float32))
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", str(npz)), "calib.npz", "'x'")
    _assert_nothing_written(out)


def test_calibration_with_wrong_dtype(runner, tiny_onnx, tmp_path, out):
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.zeros((1, 3, 16, 16), np.int32))
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", str(npz)), "calib.npz", "int32")
    _assert_nothing_written(out)


def test_no_calibration_data_asks_for_it(runner, tiny_onnx, out):
    _assert_user_error(_build(runner, tiny_onnx, out), "--calib")
    _assert_nothing_written(out)


def test_unknown_target(runner, tiny_onnx, out):
    result = runner.invoke(cli, ["build", str(tiny_onnx), "--target", "pixel9", "-o", str(out), "--calib", "random"])
    _assert_user_error(result, "pixel9", "android-arm64")
    _assert_nothing_written(out)


def test_unknown_pass(runner, tiny_onnx, out):
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", "random", "--passes", "cleanup,fusee"),
                       "--passes", "fusee", "fuse")
    _assert_nothing_written(out)


def test_existing_output_without_force(runner, tiny_onnx, out):
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", "random"), str(out), "--force")
    assert (out / "keep.txt").read_text() == "mine"
    assert _build(runner, tiny_onnx, out, "--calib", "random", "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_interrupted_build(runner, tiny_onnx, out, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_pass", interrupt)
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", "random"), "interrupted")
    _assert_nothing_written(out)


def test_bad_config_key(runner, tiny_onnx, tmp_path, out):
    cfg = tmp_path / "edgec.toml"
    cfg.write_text('target = "cpu-x86"\n[pass-options.fuse]\ntransformer_fusion = true\n')
    result = runner.invoke(cli, ["build", str(tiny_onnx), "--config", str(cfg), "-o", str(out), "--calib", "random"])
    _assert_user_error(result, "edgec.toml", "transformer_fusion")
    _assert_nothing_written(out)


def test_max_drop_without_a_lossy_pass(runner, tiny_onnx, out):
    _assert_user_error(_build(runner, tiny_onnx, out, "--calib", "random", "--passes", "fuse", "--max-drop", "0.01"),
                       "--max-drop", "fuse")
    _assert_nothing_written(out)


def test_bracketed_config_section_survives_in_the_message(runner, tiny_onnx, tmp_path, out):
    # "[calibration.image]" must be printed as text, not swallowed as terminal markup.
    cfg = tmp_path / "edgec.toml"
    cfg.write_text('target = "cpu-x86"\n[calibration.image]\nmeans = [0.5]\n')
    result = runner.invoke(cli, ["build", str(tiny_onnx), "--config", str(cfg), "-o", str(out), "--calib", "random"])
    _assert_user_error(result, "[calibration.image]", "means")
    _assert_nothing_written(out)


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=17, name="m.onnx"):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_model_ort_cannot_load_is_a_user_error_quoting_ort(runner, tmp_path, out):
    # Batch-first RNN: a valid ONNX model that ORT's CPU EP refuses at load time.
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((1, 4, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.standard_normal((1, 4, 4)).astype(np.float32), "r")]
    rnn = helper.make_node("RNN", ["x", "w", "r"], ["y"], name="rnn", hidden_size=4, layout=1)
    path = _save(tmp_path, [rnn], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 4])], inits, opset=14)
    result = _build(runner, path, out, "--calib", "random")
    _assert_user_error(result, "ONNX Runtime cannot load the input model", "layout")
    _assert_nothing_written(out)


def test_random_data_that_the_model_cannot_run_names_the_node(runner, tmp_path, out):
    # The second input is a shape: random integers are no valid shape for a 4-element tensor.
    reshape = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    path = _save(tmp_path, [reshape], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    result = _build(runner, path, out, "--calib", "random")
    _assert_user_error(result, "random data is not a valid input for this model", "reshape",
                       "pass real samples with --calib")
    _assert_nothing_written(out)


def test_ir3_model_with_initializers_as_inputs_fuses_into_a_valid_bundle(runner, tmp_path):
    # IR 3 lists every initializer as a graph input too; fusion adds weights (Conv+BN folded).
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((4, 3, 3, 3)), "scale": rng.random(4) + 0.5, "bias": rng.standard_normal(4),
              "mean": rng.standard_normal(4), "var": rng.random(4) + 0.5}
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    as_inputs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, *as_inputs],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                                                inits),
                              opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    path = tmp_path / "ir3.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "b"
    result = runner.invoke(cli, ["build", str(path), "--target", "cpu-x86", "--passes", "cleanup,fuse",
                                 "--calib", "random", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    built = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(built, full_check=True)
    assert built.ir_version >= 4 and [vi.name for vi in built.graph.input] == ["x"]
    assert "BatchNormalization" not in {n.op_type for n in built.graph.node}
    record = json.loads(result.stdout)["passes"][-1]
    assert record["max_rel_error"] < 1e-5  # fuse is lossless: the pipeline compared it on the calibration feeds
