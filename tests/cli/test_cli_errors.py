"""Bad input: exit code 2, one line naming the file, node or option at fault, and nothing written."""

from __future__ import annotations

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
