"""ONNX-file frontend: loading, external data safety, opset upgrade, input dims, dispatch errors."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_outputs_close, outputs
from onnx import TensorProto, helper
from onnx.external_data_helper import uses_external_data

from edgec.compiler.frontend import load_model, onnx_file, parse_input_shapes
from edgec.compiler.frontend.normalize import default_opset, normalize
from edgec.core.errors import ConfigError, ModelLoadError

FEEDS = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def _save_external(src: Path, folder: Path, location: str = "weights.bin") -> Path:
    """Copy ``src`` into ``folder`` with every initializer in one external file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(onnx.load(str(src)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return path


def _set_location(path: Path, location: str) -> None:
    """Point every external tensor at ``location`` (the file is rewritten without loading data)."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in onnx_file.iter_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())


# --- --input-shape parsing ------------------------------------------------------------------------------

def test_parse_input_shapes_keeps_order() -> None:
    assert parse_input_shapes(["x=1x3x224x224", "mask=1x8"]) == {"x": (1, 3, 224, 224), "mask": (1, 8)}


@pytest.mark.parametrize("value", ["x", "x=", "x=1x", "=1x3", "x=1,3", "x=0x3", "x=-1x3", "x=1x3 y=2"])
def test_parse_input_shapes_malformed(value: str) -> None:
    with pytest.raises(ConfigError, match="--input-shape") as info:
        parse_input_shapes([value])
    assert repr(value) in str(info.value)


def test_parse_input_shapes_duplicate() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_input_shapes(["x=1x3", "x=2x3"])


# --- plain loads and bad files --------------------------------------------------------------------------

def test_onnx_file_loads_and_runs(convnet_onnx: Path) -> None:
    loaded = load_model(str(convnet_onnx))
    assert loaded.base_dir == convnet_onnx.parent.resolve()
    assert not any("upgraded" in note for note in loaded.notes)
    assert_outputs_close(convnet_onnx, loaded.proto, FEEDS, atol=1e-6)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="no such file") as info:
        load_model(str(missing))
    assert str(missing) in str(info.value)


def test_text_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a README, not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="not an ONNX model") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_truncated_model_refused(convnet_onnx: Path, tmp_path: Path) -> None:
    data = convnet_onnx.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_folder_without_config_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_unknown_source_refused() -> None:
    with pytest.raises(ModelLoadError, match="no such file or folder") as info:
        load_model("definitely/not/here.onnx")
    assert "definitely/not/here.onnx" in str(info.value)


def test_hf_checkpoint_needs_extra(tmp_path: Path) -> None:
    if importlib.util.find_spec("optimum") is not None:
        pytest.skip("optimum is installed here, so the missing-extra error cannot occur")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: Hugging Face checkpoints need the 'hf' extra")
    assert "pip install 'edgec[hf]'" in message


# --- external data ----------------------------------------------------------------------------------------

def test_external_data_round_trip(convnet_onnx: Path, tmp_path: Path) -> None:
    path = _save_external(convnet_onnx, tmp_path / "ext")
    on_disk = onnx.load(str(path), load_external_data=False)
    assert any(uses_external_data(t) for t in on_disk.graph.initializer)
    loaded = load_model(str(path))
    assert not any(uses_external_data(t) for t in onnx_file.iter_tensors(loaded.proto))
    assert any("loaded external data" in note for note in loaded.notes)
    assert_outputs_close(convnet_onnx, loaded.proto, FEEDS, atol=1e-6)


def test_external_data_missing(convnet_onnx: Path, tmp_path: Path) -> None:
    path = _save_external(convnet_onnx, tmp_path / "ext")
    (path.parent / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="external data file missing") as info:
        load_model(str(path))
    assert str(path) in str(info.value) and "weights.bin" in str(info.value)


def test_external_data_escaping_folder_refused(convnet_onnx: Path, tmp_path: Path) -> None:
    path = _save_external(convnet_onnx, tmp_path / "ext")
    shutil.move(path.parent / "weights.bin", tmp_path / "weights.bin")  # the data exists, one level up
    _set_location(path, "../weights.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder") as info:
        load_model(str(path))
    assert str(path) in str(info.value) and "../weights.bin" in str(info.value)


def test_external_data_absolute_path_refused(convnet_onnx: Path, tmp_path: Path) -> None:
    path = _save_external(convnet_onnx, tmp_path / "ext")
    _set_location(path, str((path.parent / "weights.bin").resolve()))
    with pytest.raises(ModelLoadError, match="absolute path") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_external_data_symlink_out_refused(convnet_onnx: Path, tmp_path: Path) -> None:
    path = _save_external(convnet_onnx, tmp_path / "ext")
    outside = tmp_path / "outside.bin"
    shutil.move(path.parent / "weights.bin", outside)
    os.symlink(outside, path.parent / "weights.bin")  # the name is inside, the bytes are not
    with pytest.raises(ModelLoadError, match="outside the model's folder") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_external_data_too_short_refused(convnet_onnx: Path, tmp_path: Path) -> None:
    path = _save_external(convnet_onnx, tmp_path / "ext")
    weights = path.parent / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="needs bytes") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_over_limit_keeps_external_data(convnet_onnx: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A real >2 GB model is too big for a unit test; lower the limit instead of faking the file.
    monkeypatch.setattr(onnx_file, "INLINE_LIMIT_BYTES", 1000)
    path = _save_external(convnet_onnx, tmp_path / "ext")
    loaded = load_model(str(path))
    assert any(uses_external_data(t) for t in loaded.proto.graph.initializer)
    assert any("kept external data" in note for note in loaded.notes)
    assert loaded.base_dir == path.parent.resolve()
    # The proto still runs when written next to its data files.
    beside = loaded.base_dir / "normalized.onnx"
    beside.write_bytes(loaded.proto.SerializeToString())
    assert_outputs_close(convnet_onnx, beside, FEEDS, atol=1e-6)


# --- normalization ----------------------------------------------------------------------------------------

def test_opset11_upgraded_same_outputs(convnet_opset11_onnx: Path) -> None:
    assert default_opset(onnx.load(str(convnet_opset11_onnx))) == 11
    loaded = load_model(str(convnet_opset11_onnx))
    assert default_opset(loaded.proto) == 17
    assert "upgraded opset 11 -> 17" in loaded.notes
    assert_outputs_close(convnet_opset11_onnx, loaded.proto, FEEDS, atol=1e-5)


def test_opset_converter_failure_keeps_model(tmp_path: Path) -> None:
    # ImageScaler (opset 1-9) has no schema at 17, so onnx's version converter gives up on it.
    graph = helper.make_graph(
        [helper.make_node("ImageScaler", ["x"], ["s"], scale=2.0, bias=[1.0, -1.0]),
         helper.make_node("Relu", ["s"], ["y"])],
        "scaler", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    path = tmp_path / "scaler.onnx"
    onnx.save(model, str(path))
    loaded = load_model(str(path))
    assert default_opset(loaded.proto) == 9
    assert any(n.startswith("kept opset 9: the version converter failed") and "ImageScaler" in n
               for n in loaded.notes)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 2, 4, 4)
    want = np.maximum(2 * x + np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1), 0)
    got = outputs(loaded.proto, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_dynamic_batch_fixed_from_input_shape(convnet_dynamic_onnx: Path) -> None:
    loaded = load_model(str(convnet_dynamic_onnx), parse_input_shapes(["x=4x3x16x16"]))
    dims = [d.dim_value for d in loaded.proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 3, 16, 16]
    assert "fixed dim batch=4 on input x" in loaded.notes
    assert loaded.proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 4
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    assert_outputs_close(convnet_dynamic_onnx, loaded.proto, feeds, atol=1e-6)


def test_dynamic_batch_left_is_noted(convnet_dynamic_onnx: Path) -> None:
    loaded = load_model(str(convnet_dynamic_onnx))
    assert any(note.startswith("input x dim 0 (batch) still dynamic") for note in loaded.notes)
    assert loaded.proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_input_shape_unknown_name(convnet_dynamic_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="--input-shape images") as info:
        load_model(str(convnet_dynamic_onnx), {"images": (1, 3, 16, 16)})
    assert "its inputs are: x" in str(info.value)


def test_input_shape_wrong_rank(convnet_dynamic_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="rank 2, but input 'x' has rank 4") as info:
        load_model(str(convnet_dynamic_onnx), {"x": (1, 768)})
    assert "--input-shape x=1x768" in str(info.value)


def test_input_shape_conflicts_with_fixed_dim(convnet_dynamic_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="axis 1 of input 'x' is fixed at 3"):
        load_model(str(convnet_dynamic_onnx), {"x": (1, 4, 16, 16)})


def _one_op_model(op: str, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_upgrade_that_computes_something_else_is_undone() -> None:
    import dataclasses

    from edgec.compiler.frontend.load import LoadedModel, confirm_opset_upgrade

    # A stand-in for a converter bug that keeps the interface: Relu at opset 11 "upgraded" into Neg at 17.
    loaded = LoadedModel(_one_op_model("Neg", 17), "m.onnx", ["upgraded opset 11 -> 17"], None,
                         before_upgrade=_one_op_model("Relu", 11))
    feeds = [{"x": np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)}]
    kept = confirm_opset_upgrade(loaded, feeds)
    assert kept.proto.opset_import[0].version == 11 and kept.proto.graph.node[0].op_type == "Relu"
    assert kept.before_upgrade is None and not any(n.startswith("upgraded opset") for n in kept.notes)
    assert any("kept opset 11: the model upgraded to opset 17 output 'y' differs" in n for n in kept.notes)
    faithful = dataclasses.replace(loaded, proto=_one_op_model("Relu", 17))
    assert confirm_opset_upgrade(faithful, feeds) is faithful


def test_an_upgrade_that_changes_an_input_rank_is_refused() -> None:
    # ONNX's version converter turns Scan 8 (batch axis) into Scan 9 and drops the axis from the inputs.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import conformance

    (case,) = [c for c in conformance.load_cases(("node",)) if c.name == "test_scan_sum"]
    proto, notes = normalize(case.model)
    assert proto.opset_import[0].version == 8
    kept = "kept opset 8: the version converter changed 'initial' from rank 2 to rank 1"
    assert any(n.startswith(kept) for n in notes)
