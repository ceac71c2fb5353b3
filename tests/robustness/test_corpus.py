"""The bad-input corpus: hostile and broken models, external data, calibration files, options, output paths
and bundles. Each case runs ``edgec`` in a memory-capped child and is held to the error contract of
``harness.check_contract``: exit 2 with one stderr line naming the culprit, no traceback, nothing written
outside the output path, and a canary file outside the model's folder never read.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import zipfile

import numpy as np
import onnx
import pytest
import robust_inputs as inputs
from onnx import TensorProto, helper, numpy_helper
from robust_harness import CANARY, Case, check_contract, run_edgec, snapshot

BUILD = ["build", "model.onnx", "--target", "cpu-x86", "--passes", "cleanup", "--calib", "calib.npz", "-o", "out",
         "-q"]


def _model_case(name: str, make_model, culprit: str, *extra: str, code: int = 2) -> Case:
    """A case whose model.onnx is ``make_model(workdir)`` (a ModelProto or bytes), built with valid data."""

    def make(workdir: pathlib.Path) -> list[str]:
        model = make_model(workdir)
        if model is not None:
            data = model if isinstance(model, bytes) else model.SerializeToString()
            (workdir / "model.onnx").write_bytes(data)
        inputs.write_calib(workdir / "calib.npz")
        return [*BUILD, *extra]

    return Case(name, make, culprit, code)


def _graph(nodes, inputs_, outputs, inits=()) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", inputs_, outputs, list(inits))


def _x(shape=inputs.INPUT_SHAPE, dtype=TensorProto.FLOAT, name="x"):
    return helper.make_tensor_value_info(name, dtype, shape)


def _y(shape=(1, 2), name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _tiny_bytes() -> bytes:
    return inputs.tiny_model().SerializeToString()


# --- models ----------------------------------------------------------------------------------------------

def _no_outputs(_: pathlib.Path) -> onnx.ModelProto:
    graph = inputs.tiny_graph()
    del graph.output[:]
    return inputs.tiny_model(graph)


def _conv_channel_mismatch(_: pathlib.Path) -> onnx.ModelProto:
    return inputs.tiny_model(inputs.tiny_graph(np.ones((4, 5, 3, 3), np.float32)))


def _input_dims(dims) -> callable:
    def make(_: pathlib.Path) -> onnx.ModelProto:
        graph = inputs.tiny_graph()
        graph.input[0].type.tensor_type.shape.Clear()
        for d in dims:
            graph.input[0].type.tensor_type.shape.dim.add().dim_value = d
        return inputs.tiny_model(graph)

    return make


def _constant_of_shape(shape: list[int]):
    def make(_: pathlib.Path) -> onnx.ModelProto:
        nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="huge_fill"),
                 helper.make_node("ReduceSum", ["big"], ["s"], name="sum", keepdims=0),
                 helper.make_node("Add", ["x", "s"], ["y"], name="add")]
        graph = _graph(nodes, [_x()], [_y(inputs.INPUT_SHAPE)],
                       [numpy_helper.from_array(np.array(shape, np.int64), "shape")])
        return inputs.tiny_model(graph)

    return make


def _expand_huge(_: pathlib.Path) -> onnx.ModelProto:
    nodes = [helper.make_node("Expand", ["x", "shape"], ["big"], name="huge_expand"),
             helper.make_node("ReduceMax", ["big"], ["y"], name="max", keepdims=0)]
    graph = _graph(nodes, [_x()], [_y(())], [numpy_helper.from_array(np.array([1 << 16, 3, 1 << 10, 8], np.int64),
                                                                      "shape")])
    return inputs.tiny_model(graph)


def _tile_huge(_: pathlib.Path) -> onnx.ModelProto:
    nodes = [helper.make_node("Tile", ["x", "reps"], ["big"], name="huge_tile"),
             helper.make_node("ReduceMax", ["big"], ["y"], name="max", keepdims=0)]
    graph = _graph(nodes, [_x()], [_y(())], [numpy_helper.from_array(np.array([1 << 12, 1, 1 << 8, 8], np.int64),
                                                                      "reps")])
    return inputs.tiny_model(graph)


def _cyclic(_: pathlib.Path) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    return inputs.tiny_model(_graph(nodes, [_x()], [_y(inputs.INPUT_SHAPE)]))


def _dangling(_: pathlib.Path) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="reads_nothing")]
    return inputs.tiny_model(_graph(nodes, [_x()], [_y(inputs.INPUT_SHAPE)]))


def _duplicate_outputs(_: pathlib.Path) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="one"), helper.make_node("Neg", ["x"], ["y"], name="two")]
    return inputs.tiny_model(_graph(nodes, [_x()], [_y(inputs.INPUT_SHAPE)]))


def _duplicate_initializers(_: pathlib.Path) -> onnx.ModelProto:
    graph = inputs.tiny_graph()
    graph.initializer.append(numpy_helper.from_array(np.zeros(7, np.float32), "w"))
    return inputs.tiny_model(graph)


def _wrong_initializer_size(_: pathlib.Path) -> onnx.ModelProto:
    graph = inputs.tiny_graph()
    graph.initializer[0].raw_data = graph.initializer[0].raw_data[:-12]
    return inputs.tiny_model(graph)


def _huge_declared_initializer(_: pathlib.Path) -> onnx.ModelProto:
    graph = inputs.tiny_graph()
    del graph.initializer[0].dims[:]
    graph.initializer[0].dims.extend([1 << 20, 1 << 20, 3, 3])
    return inputs.tiny_model(graph)


def _op(op_type: str, domain: str = ""):
    def make(_: pathlib.Path) -> onnx.ModelProto:
        nodes = [helper.make_node(op_type, ["x"], ["y"], name="strange", domain=domain)]
        model = inputs.tiny_model(_graph(nodes, [_x()], [_y(inputs.INPUT_SHAPE)]))
        if domain:
            model.opset_import.append(helper.make_opsetid(domain, 1))
        return model

    return make


def _versions(opset: int, ir_version: int):
    return lambda _: inputs.tiny_model(opset=opset, ir_version=ir_version)


def _bad_attribute(_: pathlib.Path) -> onnx.ModelProto:
    graph = inputs.tiny_graph()
    graph.node[0].attribute.append(helper.make_attribute("kernel_shape", [1.5, 2.5]))
    return inputs.tiny_model(graph)


def _wrong_rank(_: pathlib.Path) -> onnx.ModelProto:
    graph = inputs.tiny_graph()
    graph.input[0].type.tensor_type.shape.dim.pop()
    return inputs.tiny_model(graph)


def _map_input(_: pathlib.Path) -> onnx.ModelProto:
    float_tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
    value = helper.make_value_info("x", helper.make_map_type_proto(TensorProto.INT64, float_tensor))
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id")]
    return inputs.tiny_model(_graph(nodes, [value], [value]))


def _no_default_opset(_: pathlib.Path) -> onnx.ModelProto:
    model = inputs.tiny_model()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def _empty_if_branch(_: pathlib.Path) -> onnx.ModelProto:
    empty = helper.make_graph([], "empty", [], [])
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0, name="max"),
             helper.make_node("Greater", ["m", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="branchy", then_branch=empty, else_branch=empty)]
    return inputs.tiny_model(_graph(nodes, [_x()], [_y(inputs.INPUT_SHAPE)],
                                    [numpy_helper.from_array(np.array(0, np.float32), "zero")]))


def _truncated(fraction: float):
    return lambda _: _tiny_bytes()[: int(len(_tiny_bytes()) * fraction)]


def _nan_weights(_: pathlib.Path) -> onnx.ModelProto:
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    weight[0, 0, 0, 0] = np.nan
    weight[1, 0, 0, 0] = np.inf
    return inputs.tiny_model(inputs.tiny_graph(weight))


def _fifo_model(workdir: pathlib.Path) -> None:
    os.mkfifo(workdir / "model.onnx")


def _dir_model(workdir: pathlib.Path) -> None:
    (workdir / "model.onnx").mkdir()


def _dangling_symlink(workdir: pathlib.Path) -> None:
    (workdir / "model.onnx").symlink_to(workdir / "gone.onnx")


_NON_UTF8 = os.fsdecode(b"mod\xe9l.onnx")  # a file name that is not UTF-8 (Latin-1 bytes)


def _non_utf8_name(valid: bool) -> Case:
    def make(workdir: pathlib.Path) -> list[str]:
        (workdir / _NON_UTF8).write_bytes(_tiny_bytes() if valid else _tiny_bytes()[:100])
        inputs.write_calib(workdir / "calib.npz")
        return ["build", _NON_UTF8, "--target", "cpu-x86", "--passes", "cleanup", "--calib", "calib.npz", "-o", "out"]

    name = f"non-utf8-model-name-{'valid' if valid else 'corrupt'}"
    return Case(name, make, "" if valid else "mod", 0 if valid else 2)


MODEL_CASES = [
    _non_utf8_name(valid=True),
    _non_utf8_name(valid=False),
    _model_case("missing-model", lambda _: None, "model.onnx"),
    _model_case("empty-file", lambda _: b"", "model.onnx"),
    _model_case("random-bytes", lambda _: np.random.default_rng(1).bytes(4096), "model.onnx"),
    _model_case("text-file", lambda _: b"this is not a model\n" * 10, "model.onnx"),
    _model_case("gzip-file", lambda _: b"\x1f\x8b\x08\x00" + bytes(64), "model.onnx"),
    *[_model_case(f"truncated-{int(f * 100)}", _truncated(f), "model.onnx") for f in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)],
    _model_case("fifo-model", _fifo_model, "model.onnx"),
    _model_case("directory-model", _dir_model, "model.onnx"),
    _model_case("dangling-symlink", _dangling_symlink, "model.onnx"),
    _model_case("no-outputs", _no_outputs, "output"),
    _model_case("conv-channel-mismatch", _conv_channel_mismatch, "conv"),
    _model_case("negative-dim", _input_dims([1, 3, -8, 8]), "'x'"),
    _model_case("dims-past-2^63", _input_dims([1 << 40, 3, 1 << 40, 8]), "'x'"),
    _model_case("opset-from-the-future", _versions(99, 8), "opset"),
    _model_case("ir-from-the-future", _versions(17, 99), "ir_version"),
    _model_case("ir-version-zero", _versions(17, 0), "model.onnx"),
    _model_case("constant-of-shape-terabytes", _constant_of_shape([1 << 20, 1 << 20, 1 << 10]), "huge_fill"),
    _model_case("constant-of-shape-negative", _constant_of_shape([-1, 4]), "huge_fill"),
    _model_case("expand-to-gigabytes", _expand_huge, "huge_expand"),
    _model_case("tile-to-gigabytes", _tile_huge, "huge_tile"),
    _model_case("cyclic-graph", _cyclic, "model.onnx"),
    _model_case("dangling-input", _dangling, "ghost"),
    _model_case("duplicate-output-names", _duplicate_outputs, "'y'"),
    _model_case("duplicate-initializers", _duplicate_initializers, "w initializer"),
    _model_case("wrong-initializer-size", _wrong_initializer_size, "tensor name: w"),
    _model_case("huge-declared-initializer", _huge_declared_initializer, "tensor name: w"),
    _model_case("unknown-op", _op("FrobnicateEverything"), "FrobnicateEverything"),
    _model_case("custom-domain-op", _op("Mystery", "com.example"), "Mystery"),
    _model_case("attribute-of-wrong-type", _bad_attribute, "kernel_shape"),
    _model_case("declared-rank-wrong", _wrong_rank, "'x'"),
    _model_case("map-input", _map_input, "'x'"),
    _model_case("no-default-opset", _no_default_opset, "model.onnx"),
    _model_case("if-branch-without-outputs", _empty_if_branch, "branchy"),
    _model_case("nan-inf-weights-strict", _nan_weights, "'w'", "--strict"),
    _model_case("nan-inf-weights-warn", _nan_weights, "", code=0),
]


# --- external data -----------------------------------------------------------------------------------------

def _external(location: str, setup=None, offset: int | None = None, length: int | None = None):
    """The tiny CNN with initializer 'w' stored as external data at ``location`` (raw bytes in data.bin)."""

    def make(workdir: pathlib.Path) -> onnx.ModelProto:
        model = inputs.tiny_model()
        weight = model.graph.initializer[0]
        (workdir / "data.bin").write_bytes(weight.raw_data)
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entries = {"location": location(workdir) if callable(location) else location}
        if offset is not None:
            entries["offset"] = str(offset)
        if length is not None:
            entries["length"] = str(length)
        for key, value in entries.items():
            weight.external_data.add(key=key, value=value)
        if setup is not None:
            setup(workdir)
        return model

    return make


def _hard_link(workdir: pathlib.Path) -> None:
    os.link(workdir.parent / "outside" / "canary.bin", workdir / "linked.bin")


def _sym_link(workdir: pathlib.Path) -> None:
    (workdir / "linked.bin").symlink_to(workdir.parent / "outside" / "canary.bin")


def _fifo_data(workdir: pathlib.Path) -> None:
    os.mkfifo(workdir / "pipe.bin")


def _data_dir(workdir: pathlib.Path) -> None:
    (workdir / "folder.bin").mkdir()


EXTERNAL_CASES = [
    _model_case("external-escapes-with-dotdot", _external("../outside/canary.bin"), "canary.bin"),
    _model_case("external-escapes-midway", _external("sub/../../outside/canary.bin"), "canary.bin"),
    _model_case("external-absolute-path", _external(lambda w: str(w.parent / "outside" / "canary.bin")), "canary.bin"),
    _model_case("external-nul-byte", _external("data.bin\x00../outside/canary.bin"), "'w'"),
    _model_case("external-hard-link-out", _external("linked.bin", _hard_link), "linked.bin"),
    _model_case("external-symlink-out", _external("linked.bin", _sym_link), "linked.bin"),
    _model_case("external-fifo", _external("pipe.bin", _fifo_data), "pipe.bin"),
    _model_case("external-is-a-folder", _external("folder.bin", _data_dir), "folder.bin"),
    _model_case("external-missing-file", _external("nowhere.bin"), "nowhere.bin"),
    _model_case("external-empty-location", _external(""), "'w'"),
    _model_case("external-offset-past-end", _external("data.bin", offset=1 << 20), "data.bin"),
    _model_case("external-length-past-end", _external("data.bin", length=1 << 40), "data.bin"),
    _model_case("external-negative-offset", _external("data.bin", offset=-5), "'w'"),
    _model_case("external-home-dir", _external("~/.bashrc"), "'w'"),
    _model_case("external-windows-drive", _external("C:\\outside\\canary.bin"), "'w'"),
]


# --- calibration files -------------------------------------------------------------------------------------

def _calib_case(name: str, write, culprit: str, calib_name: str = "calib.npz", *extra: str) -> Case:
    def make(workdir: pathlib.Path) -> list[str]:
        inputs.save(inputs.tiny_model(), workdir / "model.onnx")
        write(workdir / calib_name)
        args = [*BUILD, *extra]
        args[args.index("calib.npz")] = calib_name
        return args

    return Case(name, make, culprit)


def _with_sample(value: float):
    def write(path: pathlib.Path) -> None:
        data = inputs.calibration()
        data[2, 0, 1, 2, 3] = value
        inputs.write_calib(path, x=data)

    return write


def _zip_members(members: dict[str, bytes]):
    return lambda path: inputs.zip_with(path, members)


def _pickled_npy(path: pathlib.Path) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    inputs.zip_with(path, {"x.npy": buffer.getvalue()})


def _fifo_calib(path: pathlib.Path) -> None:
    os.mkfifo(path)


def _image_folder(files: dict[str, bytes]):
    def write(path: pathlib.Path) -> None:
        path.mkdir()
        for name, data in files.items():
            (path / name).write_bytes(data)

    return write


CALIB_CASES = [
    _calib_case("calib-npz-bomb", lambda p: inputs.write_bomb(p, "x.npy", header=inputs.npy_header((1 << 28,))),
                "member 'x'"),
    _calib_case("calib-huge-npy-header", _zip_members({"x.npy": inputs.npy_header((1 << 40, 3, 8, 8))}),
                "member 'x'"),
    _calib_case("calib-huge-npy-file", lambda p: p.write_bytes(inputs.npy_header((1 << 40,))), "calib.npy",
                "calib.npy"),
    _calib_case("calib-pickled-member", _pickled_npy, "member 'x'"),
    _calib_case("calib-nan", _with_sample(np.nan), "sample 2"),
    _calib_case("calib-inf", _with_sample(np.inf), "sample 2"),
    _calib_case("calib-empty-batch", lambda p: inputs.write_calib(p, x=np.zeros((0, *inputs.INPUT_SHAPE), np.float32)),
                "empty"),
    _calib_case("calib-wrong-dtype", lambda p: inputs.write_calib(p, x=inputs.calibration().astype(np.float64)), "'x'"),
    _calib_case("calib-wrong-shape", lambda p: inputs.write_calib(p, x=np.zeros((4, 1, 3, 9, 9), np.float32)), "'x'"),
    _calib_case("calib-missing-input", lambda p: inputs.write_calib(p, other=inputs.calibration()), "'x'"),
    _calib_case("calib-extra-array", lambda p: inputs.write_calib(p, x=inputs.calibration(), z=np.zeros(3)), "'z'"),
    _calib_case("calib-truncated", lambda p: p.write_bytes(_npz_bytes()[:300]), "calib.npz"),
    _calib_case("calib-not-a-zip", lambda p: p.write_text("x = 1, 2, 3\n"), "calib.npz"),
    _calib_case("calib-member-escapes", _zip_members({"../x.npy": inputs.npy_bytes(inputs.calibration())}),
                "calib.npz"),
    _calib_case("calib-fifo", _fifo_calib, "calib.npz"),
    _calib_case("calib-missing", lambda p: None, "calib.npz"),
    _calib_case("calib-empty-image-folder", _image_folder({}), "images", "images"),
    _calib_case("calib-corrupt-png", _image_folder({"a.png": b"\x89PNG\r\n\x1a\n" + bytes(40)}), "a.png", "images"),
    _calib_case("calib-empty-text", lambda p: p.write_text(""), "lines.txt", "lines.txt"),
    _calib_case("calib-binary-text", lambda p: p.write_bytes(b"\xff\xfe\x00bad\xc3\x28\n" * 4), "lines.txt",
                "lines.txt"),
]


def _npz_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=inputs.calibration())
    return buffer.getvalue()


# --- command-line options --------------------------------------------------------------------------------

def _option_case(name: str, args: list[str], culprit: str) -> Case:
    def make(workdir: pathlib.Path) -> list[str]:
        inputs.save(inputs.tiny_model(), workdir / "model.onnx")
        inputs.write_calib(workdir / "calib.npz")
        (workdir / "bad.toml").write_text('passes = ["cleanup"\n')
        (workdir / "unknown.toml").write_text('passes = ["cleanup"]\nfrobnicate = 1\n')
        (workdir / "typed.toml").write_text('passes = "cleanup"\n')
        return args

    return Case(name, make, culprit)


OPTION_CASES = [
    _option_case("unknown-option", [*BUILD, "--frobnicate"], "--frobnicate"),
    _option_case("unknown-format", [*BUILD, "--format", "tarball"], "--format"),
    _option_case("unknown-command", ["frobnicate"], "frobnicate"),
    _option_case("unknown-target", ["build", "model.onnx", "--target", "toaster", "--calib", "calib.npz", "-o", "out"],
                 "toaster"),
    _option_case("unknown-pass", ["build", "model.onnx", "--target", "cpu-x86", "--passes", "cleanup,teleport",
                                  "--calib", "calib.npz", "-o", "out"], "teleport"),
    _option_case("input-shape-not-numbers", [*BUILD, "--input-shape", "x=1xthreex8x8"], "--input-shape"),
    _option_case("input-shape-unknown-input", [*BUILD, "--input-shape", "nope=1x3x8x8"], "nope"),
    _option_case("input-shape-negative", [*BUILD, "--input-shape", "x=1x-3x8x8"], "--input-shape"),
    _option_case("latency-negative", [*BUILD, "--latency-ms", "-1"], "--latency-ms"),
    _option_case("max-drop-too-big", [*BUILD, "--max-drop", "2"], "--max-drop"),
    _option_case("seed-not-a-number", [*BUILD, "--seed", "many"], "--seed"),
    _option_case("config-missing", [*BUILD, "--config", "nowhere.toml"], "nowhere.toml"),
    _option_case("config-not-toml", [*BUILD, "--config", "bad.toml"], "bad.toml"),
    _option_case("config-unknown-key", [*BUILD, "--config", "unknown.toml"], "frobnicate"),
    _option_case("config-wrong-type", [*BUILD, "--config", "typed.toml"], "passes"),
    _option_case("no-model", ["build", "--target", "cpu-x86", "-o", "out"], "MODEL"),
    _option_case("empty-passes", ["build", "model.onnx", "--target", "cpu-x86", "--passes", ",", "--calib",
                                  "calib.npz", "-o", "out"], "--passes"),
    _option_case("verify-missing-bundle", ["verify", "nowhere"], "nowhere"),
    _option_case("profile-unknown-option", ["profile", "model.onnx", "--runz", "3"], "--runz"),
]


# --- output paths ------------------------------------------------------------------------------------------

def _output_case(name: str, prepare, out: str | callable, culprit: str | callable, *extra: str) -> Case:
    def make(workdir: pathlib.Path) -> list[str]:
        inputs.save(inputs.tiny_model(), workdir / "model.onnx")
        inputs.write_calib(workdir / "calib.npz")
        prepare(workdir)
        args = [*BUILD, *extra]
        args[args.index("out")] = out(workdir) if callable(out) else out
        return args

    return Case(name, make, culprit)


def _readonly_parent(workdir: pathlib.Path) -> None:
    (workdir / "locked").mkdir()
    (workdir / "locked").chmod(stat.S_IRUSR | stat.S_IXUSR)


def _readonly_target(workdir: pathlib.Path) -> str:
    # root ignores permission bits; sysfs refuses new entries even to root
    return "/sys/edgec-robustness-out" if os.geteuid() == 0 else str(workdir / "locked" / "out")


OUTPUT_CASES = [
    _output_case("output-parent-is-a-file", lambda w: (w / "plain").write_text("x"), "plain/out", "plain"),
    _output_case("output-parent-read-only", _readonly_parent, _readonly_target,
                 lambda w: _readonly_target(w).rsplit("/", 1)[0]),
    _output_case("output-exists", lambda w: (w / "existing").mkdir(), "existing", "existing"),
    _output_case("output-is-the-model", lambda w: None, "model.onnx", "model.onnx", "--force"),
    _output_case("output-is-the-model-folder", lambda w: None, ".", "model", "--force"),
    _output_case("output-inside-a-file-path", lambda w: None, "calib.npz/out", "calib.npz"),
]


# --- bundles -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A valid directory bundle and zip bundle of the tiny CNN, built once."""
    from click.testing import CliRunner

    from edgec.compiler.cli import cli

    folder = tmp_path_factory.mktemp("bundles")
    inputs.save(inputs.tiny_model(), folder / "model.onnx")
    inputs.write_calib(folder / "calib.npz")
    made = {}
    for fmt in ("dir", "zip"):
        out = folder / f"bundle-{fmt}"
        result = CliRunner().invoke(cli, ["build", str(folder / "model.onnx"), "--target", "cpu-x86", "--passes",
                                          "cleanup", "--calib", str(folder / "calib.npz"), "-o", str(out),
                                          "--format", fmt, "-q"])
        assert result.exit_code == 0, result.output
        made[fmt] = out
    return made


def _zip_rewrite(edit):
    """A verify case on a copy of the zip bundle whose members ``edit(dict name -> bytes)`` changes."""

    def make(workdir: pathlib.Path, bundles: dict[str, pathlib.Path]) -> list[str]:
        with zipfile.ZipFile(bundles["zip"]) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        edit(members, workdir)
        inputs.zip_with(workdir / "bundle.zip", members)
        return ["verify", "bundle.zip"]

    return make


def _dir_edit(edit):
    def make(workdir: pathlib.Path, bundles: dict[str, pathlib.Path]) -> list[str]:
        shutil.copytree(bundles["dir"], workdir / "bundle")
        edit(workdir / "bundle", workdir)
        return ["verify", "bundle"]

    return make


def _set(name: str, data: bytes):
    def edit(members: dict[str, bytes], _: pathlib.Path) -> None:
        members[name] = data

    return edit


def _drop(name: str):
    def edit(members: dict[str, bytes], _: pathlib.Path) -> None:
        members.pop(name)

    return edit


def _manifest_edit(change):
    import json

    def edit(members: dict[str, bytes], _: pathlib.Path) -> None:
        manifest = json.loads(members["manifest.json"])
        change(manifest)
        members["manifest.json"] = json.dumps(manifest).encode()

    return edit


def _bomb_bundle(workdir: pathlib.Path, bundles: dict[str, pathlib.Path]) -> list[str]:
    with zipfile.ZipFile(bundles["zip"]) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    inputs.write_bomb(workdir / "bundle.zip", "model.onnx")
    with zipfile.ZipFile(workdir / "bundle.zip", "a") as archive:
        for name, data in members.items():
            if name != "model.onnx":
                archive.writestr(name, data)
    return ["verify", "bundle.zip"]


def _symlink_member(workdir: pathlib.Path, bundles: dict[str, pathlib.Path]) -> list[str]:
    with zipfile.ZipFile(bundles["zip"]) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(workdir / "bundle.zip", "w") as archive:
        for name, data in members.items():
            if name == "sample.npz":
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, str(workdir.parent / "outside" / "canary.bin"))
            else:
                archive.writestr(name, data)
    return ["verify", "bundle.zip"]


def _raw_bundle(data):
    def make(workdir: pathlib.Path, bundles: dict[str, pathlib.Path]) -> list[str]:
        (workdir / "bundle.zip").write_bytes(data(bundles))
        return ["verify", "bundle.zip"]

    return make


def _non_utf8_member(workdir: pathlib.Path, bundles: dict[str, pathlib.Path]) -> list[str]:
    """A member whose name is the byte 0xE9 in a zip that does not say its names are UTF-8."""
    with zipfile.ZipFile(bundles["zip"]) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    inputs.zip_with(workdir / "bundle.zip", {**members, "cafX.txt": b"x"})
    data = (workdir / "bundle.zip").read_bytes().replace(b"cafX.txt", b"caf\xe9.txt")
    (workdir / "bundle.zip").write_bytes(data)
    return ["verify", "bundle.zip"]


def _drifted_sample(bundle: pathlib.Path, _: pathlib.Path) -> None:
    import hashlib
    import io
    import json

    with np.load(bundle / "sample.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = next(k for k in arrays if k.startswith("output/"))
    arrays[key] = arrays[key] + 1.0
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (bundle / "sample.npz").write_bytes(buffer.getvalue())
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = manifest["files"]
    entry = files["sample.npz"]
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    files["sample.npz"] = digest if isinstance(entry, str) else {**entry, "sha256": digest}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _symlinked_dir_file(bundle: pathlib.Path, workdir: pathlib.Path) -> None:
    (bundle / "sample.npz").unlink()
    (bundle / "sample.npz").symlink_to(workdir.parent / "outside" / "canary.bin")


BUNDLE_CASES = [
    ("bundle-zip-bomb", _bomb_bundle, "model.onnx"),
    ("bundle-member-dotdot", _zip_rewrite(_set("../escape.txt", b"x")), "../escape.txt"),
    ("bundle-member-absolute", _zip_rewrite(_set("/tmp/escape.txt", b"x")), "/tmp/escape.txt"),
    ("bundle-member-symlink", _symlink_member, "sample.npz"),
    ("bundle-checksum-mismatch", _zip_rewrite(_set("model.onnx", _tiny_bytes()[:-1] + b"\x00")), "model.onnx"),
    ("bundle-no-manifest", _zip_rewrite(_drop("manifest.json")), "manifest.json"),
    ("bundle-manifest-not-json", _zip_rewrite(_set("manifest.json", b"{not json")), "manifest.json"),
    ("bundle-manifest-huge", _zip_rewrite(_set("manifest.json", b"[" + b"0," * (1 << 22) + b"0]")), "manifest.json"),
    ("bundle-unknown-schema", _zip_rewrite(_manifest_edit(lambda m: m.update(schema_version=99))), "schema"),
    ("bundle-no-model-file", _zip_rewrite(_drop("model.onnx")), "model.onnx"),
    ("bundle-pickled-sample", _zip_rewrite(_set("sample.npz", b"")), "sample.npz"),
    ("bundle-non-utf8-member", _non_utf8_member, "caf"),
    ("bundle-truncated-zip", _raw_bundle(lambda b: b["zip"].read_bytes()[:200]), "bundle.zip"),
    ("bundle-not-a-zip", _raw_bundle(lambda b: b"hello"), "bundle.zip"),
    ("bundle-dir-sample-drift", _dir_edit(_drifted_sample), "sample.npz"),
    ("bundle-dir-symlink-out", _dir_edit(_symlinked_dir_file), "sample.npz"),
    ("bundle-dir-manifest-absolute-file",
     _dir_edit(lambda b, _: (b / "manifest.json").write_text((b / "manifest.json").read_text().replace(
         '"model.onnx"', '"/etc/passwd"', 1))), "/etc/passwd"),
]


# --- running -----------------------------------------------------------------------------------------------

ALL = [*MODEL_CASES, *EXTERNAL_CASES, *CALIB_CASES, *OPTION_CASES, *OUTPUT_CASES]


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(workdir, canary): the case's folder, and a file outside it that edgec must never read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary.bin"
    canary.write_bytes(CANARY * 64)
    workdir = tmp_path / "case"
    workdir.mkdir()
    return workdir, canary


def _run_case(case: Case, args: list[str], workdir: pathlib.Path, canary: pathlib.Path) -> None:
    before = snapshot(workdir)
    outside_before = snapshot(canary.parent)
    run = run_edgec(args, workdir, env={"EDGEC_CACHE": str(workdir / "cache")})
    check_contract(case, run, workdir, before, canary)
    assert snapshot(canary.parent) == outside_before, f"{case.name}: wrote next to the canary"


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_bad_input(case: Case, workspace) -> None:
    workdir, canary = workspace
    args = case.make(workdir)
    _run_case(case, args, workdir, canary)


@pytest.mark.parametrize(("name", "make", "culprit"), BUNDLE_CASES, ids=[c[0] for c in BUNDLE_CASES])
def test_bad_bundle(name: str, make, culprit: str, workspace, bundles) -> None:
    workdir, canary = workspace
    args = make(workdir, bundles)
    code = 1 if name == "bundle-dir-sample-drift" else 2
    _run_case(Case(name, lambda _: args, culprit, code), args, workdir, canary)


def test_the_corpus_is_big_enough() -> None:
    assert len(ALL) + len(BUNDLE_CASES) >= 100
