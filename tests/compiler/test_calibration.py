"""Calibration data: random, .npz, image folders and text files become feeds that run in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import outputs
from onnx import TensorProto, helper

from edgec.compiler.calibration import RANDOM_WARNING, ImagePreprocess, load_calibration, model_inputs
from edgec.core.errors import CalibrationError, ConfigError
from edgec.runtime.values import encode

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog"]


def _masked_model(batch: int | str = 1) -> onnx.ModelProto:
    """y = x * float(mask): a float input and an int64 mask input."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "maskf"], ["y"])],
        "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _text_model(seq: int | str = 8) -> onnx.ModelProto:
    """Embedding lookup of input_ids plus token types, masked and summed over the sequence."""
    rng = np.random.default_rng(0)
    words = helper.make_tensor("words", TensorProto.FLOAT, [1000, 4], rng.standard_normal(4000).tolist())
    types = helper.make_tensor("types", TensorProto.FLOAT, [2, 4], rng.standard_normal(8).tolist())
    nodes = [helper.make_node("Gather", ["words", "input_ids"], ["w"]),
             helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
             helper.make_node("Add", ["w", "t"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["em"]),
             helper.make_node("ReduceSum", ["em", "one"], ["y"], keepdims=0)]
    inits = [words, types, helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, seq])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "text", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                  [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(str(folder))
    return folder


def _runs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [next(iter(o.values())) for o in outputs(model, feeds)]


# --- no data, zoo, random -------------------------------------------------------------------------------

def test_no_calibration_source() -> None:
    with pytest.raises(CalibrationError, match=r"pass --calib PATH .* or --calib random"):
        load_calibration(None, _masked_model())


def test_zoo_feeds_used_and_checked() -> None:
    zoo = [{"x": np.ones((1, 4), np.float32), "mask": np.ones((1, 4), np.int64)}] * 3
    calib = load_calibration(None, _masked_model(), zoo_feeds=zoo, n=2)
    assert calib.source == "zoo" and len(calib.feeds) == 2 and calib.warnings == []
    with pytest.raises(CalibrationError, match="zoo: input 'mask' has dtype int32, expected int64"):
        load_calibration(None, _masked_model(), zoo_feeds=[{**zoo[0], "mask": np.ones((1, 4), np.int32)}])


def test_random_feeds_seeded_and_run() -> None:
    model = _masked_model()
    calib = load_calibration("random", model, n=4, seed=7)
    again = load_calibration("random", model, n=4, seed=7)
    assert RANDOM_WARNING in calib.warnings and len(calib.feeds) == 4
    for a, b in zip(calib.feeds, again.feeds, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert all((f["mask"] == 1).all() and f["x"].dtype == np.float32 for f in calib.feeds)
    for feeds, out in zip(calib.feeds, _runs(model, calib.feeds), strict=True):
        np.testing.assert_allclose(out, feeds["x"], rtol=0, atol=0)  # mask of ones keeps x exactly


def test_random_token_ids_in_range() -> None:
    model = _text_model(seq=8)
    calib = load_calibration("random", model, n=3)
    ids = calib.feeds[0]["input_ids"]
    assert ids.shape == (1, 8) and ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < 1000
    assert (calib.feeds[0]["token_type_ids"] == 0).all()
    assert all(out.shape == (1, 4) and np.isfinite(out).all() for out in _runs(model, calib.feeds))


def test_random_data_for_symbolic_dims_is_refused_naming_them() -> None:
    # A sequence length (or a detector's height and width) is not something to guess; the batch axis is 1.
    with pytest.raises(CalibrationError, match=r"--calib random: input 'input_ids' has symbolic dims seq \(axis 1\); "
                                               r"give their sizes with --input-shape input_ids=1xN"):
        load_calibration("random", _text_model(seq="seq"))
    calib = load_calibration("random", _masked_model(batch="batch"), n=2)
    assert calib.feeds[0]["x"].shape == (1, 4)


# --- .npz -----------------------------------------------------------------------------------------------

def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("lead, count", [((), 1), ((5,), 5)])
def test_npz_one_sample_or_leading_stack(tmp_path: Path, lead: tuple[int, ...], count: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((*lead, 1, 4)).astype(np.float32)
    path = _npz(tmp_path, x=x, mask=np.ones((*lead, 1, 4), np.int64))
    calib = load_calibration(path, _masked_model(), n=16)
    assert len(calib.feeds) == count and calib.source == path
    got = np.stack(_runs(_masked_model(), calib.feeds))
    np.testing.assert_allclose(got.reshape(x.shape), x, rtol=0, atol=0)


def test_npz_stack_along_batch_axis_capped(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    path = _npz(tmp_path, x=x, mask=np.ones((6, 4), np.int64))
    calib = load_calibration(path, _masked_model(), n=4)
    assert [f["x"].shape for f in calib.feeds] == [(1, 4)] * 4
    np.testing.assert_array_equal(calib.feeds[3]["x"], x[3:4])
    assert calib.warnings == [f"{path}: used the first 4 of 6 samples"]


def test_npz_missing_input(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((1, 4), np.float32))
    expected = r"no array for input 'mask'; expected arrays: x, mask"
    with pytest.raises(CalibrationError, match=expected) as info:
        load_calibration(path, _masked_model())
    assert path in str(info.value)


def test_npz_extra_array(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((1, 4), np.float32), mask=np.ones((1, 4), np.int64),
                labels=np.zeros(1, np.int64))
    expected = r"array 'labels' is not a model input; expected arrays: x, mask"
    with pytest.raises(CalibrationError, match=expected):
        load_calibration(path, _masked_model())


def test_npz_wrong_dtype(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((1, 4), np.float64), mask=np.ones((1, 4), np.int64))
    with pytest.raises(CalibrationError, match="input 'x' has dtype float64, expected float32") as info:
        load_calibration(path, _masked_model())
    assert path in str(info.value)


def test_npz_wrong_shape(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((1, 5), np.float32), mask=np.ones((1, 4), np.int64))
    with pytest.raises(CalibrationError, match=r"input 'x' has shape \(1, 5\), expected \(1, 4\)") as info:
        load_calibration(path, _masked_model())
    assert path in str(info.value)


def test_npz_sample_counts_differ(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((3, 1, 4), np.float32), mask=np.ones((2, 1, 4), np.int64))
    with pytest.raises(CalibrationError, match=r"different numbers of samples \(x: 3, mask: 2\)"):
        load_calibration(path, _masked_model())


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04 truncated zip header"])
def test_npz_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(CalibrationError, match="cannot read .npz") as info:
        load_calibration(str(path), _masked_model())
    assert str(path) in str(info.value)


def test_npz_with_pickled_objects_refused(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.array([{"a": 1}], dtype=object), mask=np.ones((1, 4), np.int64))
    with pytest.raises(CalibrationError, match="cannot read .npz") as info:
        load_calibration(path, _masked_model())
    assert path in str(info.value)


def test_missing_path_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="--calib .*nothing.npz: no such file or folder"):
        load_calibration(str(tmp_path / "nothing.npz"), _masked_model())
    odd = tmp_path / "data.csv"
    odd.write_text("1,2,3\n")
    with pytest.raises(CalibrationError, match="data.csv: unsupported calibration file"):
        load_calibration(str(odd), _masked_model())


# --- image folders --------------------------------------------------------------------------------------

def _write_images(folder: Path, count: int) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(count)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"img{i}.png")
    return pixels


def test_image_folder_normalized_and_runs(tmp_path: Path, convnet_onnx: Path) -> None:
    folder = tmp_path / "images"
    pixels = _write_images(folder, 3)
    (folder / "README.txt").write_text("not an image")
    cfg = ImagePreprocess(size=[16, 16], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    model = onnx.load(str(convnet_onnx))
    calib = load_calibration(str(folder), model, image_config=cfg)
    assert len(calib.feeds) == 3 and calib.feeds[0]["x"].shape == (1, 3, 16, 16)
    assert any("skipped 1 non-image files: README.txt" in w for w in calib.warnings)
    # Same size, so the resize is the identity; check the normalization of the first image.
    want = ((pixels[0] / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(calib.feeds[0]["x"][0], want, rtol=0, atol=1e-5)
    outputs = _runs(model, calib.feeds)
    assert all(o.shape == (1, 5) and np.isfinite(o).all() for o in outputs)


def test_image_folder_resizes_to_model(tmp_path: Path, convnet_onnx: Path) -> None:
    from PIL import Image

    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(np.full((40, 30, 3), 255, np.uint8)).save(folder / "white.jpg")
    calib = load_calibration(str(folder), onnx.load(str(convnet_onnx)))
    assert calib.feeds[0]["x"].shape == (1, 3, 16, 16)
    np.testing.assert_allclose(calib.feeds[0]["x"], 1.0, rtol=0, atol=1e-6)  # white, scaled to [0, 1]
    assert any("no [calibration.image] settings" in w for w in calib.warnings)


def test_image_folder_empty(tmp_path: Path, convnet_onnx: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(CalibrationError, match="no readable .png or .jpg images") as info:
        load_calibration(str(folder), onnx.load(str(convnet_onnx)))
    assert str(folder) in str(info.value)


def test_image_folder_only_junk(tmp_path: Path, convnet_onnx: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "fake.png").write_text("not a png")
    with pytest.raises(CalibrationError, match="no readable .png or .jpg images"):
        load_calibration(str(folder), onnx.load(str(convnet_onnx)))


def test_image_folder_needs_image_model(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", 1)
    with pytest.raises(CalibrationError, match="one 4-d float input; the model has: x float32"):
        load_calibration(str(tmp_path / "images"), _masked_model())


def test_image_size_mismatch(tmp_path: Path, convnet_onnx: Path) -> None:
    _write_images(tmp_path / "images", 1)
    with pytest.raises(CalibrationError, match=r"size \(32, 32\) does not match input 'x'"):
        load_calibration(str(tmp_path / "images"), onnx.load(str(convnet_onnx)),
                         image_config=ImagePreprocess(size=32))


@pytest.mark.parametrize("kwargs, key", [({"size": [1, 2, 3]}, "size"), ({"std": [0.0]}, "std"),
                                         ({"layout": "CHW"}, "layout"), ({"channels": 4}, "channels")])
def test_image_preprocess_rejects_bad_values(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[calibration.image\] {key}"):
        ImagePreprocess(**kwargs)


# --- text files -----------------------------------------------------------------------------------------

def test_text_file_tokenized_and_runs(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "sentences.txt"
    path.write_text("the cat sat on the mat\n\na dog sat\nthe cat sat on a mat the dog sat on a mat\n")
    model = _text_model()
    calib = load_calibration(str(path), model, tokenizer_dir=tokenizer_dir)
    assert len(calib.feeds) == 3 and calib.warnings == []
    first = calib.feeds[0]
    np.testing.assert_array_equal(first["input_ids"], [[2, 5, 6, 7, 8, 5, 9, 3]])
    np.testing.assert_array_equal(calib.feeds[1]["attention_mask"], [[1, 1, 1, 1, 1, 0, 0, 0]])
    assert calib.feeds[2]["input_ids"][0, -1] == 3  # truncated to 8, still ends with [SEP]
    outputs = _runs(model, calib.feeds)
    weights = onnx.numpy_helper.to_array(model.graph.initializer[0])
    types = onnx.numpy_helper.to_array(model.graph.initializer[1])
    want = (weights[first["input_ids"][0]] + types[0]).sum(axis=0)
    np.testing.assert_allclose(outputs[0][0], want, rtol=0, atol=1e-5)


def test_text_dynamic_length_padded_to_default(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("the cat\n")
    calib = load_calibration(str(path), _text_model(seq="seq"), tokenizer_dir=tokenizer_dir)
    assert calib.feeds[0]["input_ids"].shape == (1, 128)
    assert any("padded sentences to 128 tokens" in w for w in calib.warnings)


def test_text_needs_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("the cat\n")
    with pytest.raises(CalibrationError, match="needs a tokenizer") as info:
        load_calibration(str(path), _text_model())
    assert str(path) in str(info.value)


def test_text_bad_tokenizer_dir(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("the cat\n")
    with pytest.raises(CalibrationError, match="cannot load a tokenizer") as info:
        load_calibration(str(path), _text_model(), tokenizer_dir=tmp_path / "nothing-here")
    assert "nothing-here" in str(info.value)


def test_text_needs_token_inputs(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("the cat\n")
    with pytest.raises(CalibrationError, match="the model has: x, mask"):
        load_calibration(str(path), _masked_model(), tokenizer_dir=tokenizer_dir)


def test_text_empty_file(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("\n   \n")
    with pytest.raises(CalibrationError, match="at least 1 non-empty lines, found 0") as info:
        load_calibration(str(path), _text_model(), tokenizer_dir=tokenizer_dir)
    assert str(path) in str(info.value)


def test_image_folder_grouped_to_fixed_batch(tmp_path: Path, convnet_dynamic_onnx: Path) -> None:
    from edgec.compiler.frontend import load_model

    model = load_model(str(convnet_dynamic_onnx), {"x": (2, 3, 16, 16)}).proto
    _write_images(tmp_path / "images", 5)
    calib = load_calibration(str(tmp_path / "images"), model, n=16)
    assert [f["x"].shape for f in calib.feeds] == [(2, 3, 16, 16)] * 2
    assert any("left out 1 images that do not fill a batch of 2" in w for w in calib.warnings)
    assert all(o.shape == (2, 5) for o in _runs(model, calib.feeds))


def _scalar_model() -> onnx.ModelProto:
    """y = x * float(sr): a rank-0 int64 input, as a streaming audio model's sample rate."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "srf"], ["y"])],
        "scalar", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                   helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rank0_input_calibrates_from_a_stack_of_scalars(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, x=np.ones((3, 1, 4), np.float32), sr=np.array([8000, 16000, 16000], np.int64))
    feeds = load_calibration(str(path), _scalar_model()).feeds
    assert [f["sr"].shape for f in feeds] == [(), (), ()] and [int(f["sr"]) for f in feeds] == [8000, 16000, 16000]
    one = tmp_path / "one.npz"  # a stack of one scalar, and a single scalar
    np.savez(one, x=np.ones((1, 4), np.float32), sr=np.array([16000], np.int64))
    assert load_calibration(str(one), _scalar_model()).feeds[0]["sr"].shape == ()


def test_string_inputs_calibrate_from_unicode_arrays(tmp_path: Path) -> None:
    # ONNX strings are numpy object arrays, which .npz stores only pickled; unicode arrays need no pickle.
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "s.npz"
    np.savez(path, s=np.array(["a", "bc"]))
    (feed,) = load_calibration(str(path), model).feeds
    assert feed["s"].dtype == object and feed["s"].tolist() == ["a", "bc"]


# --- sequences and optionals -------------------------------------------------------------------------

def _seq_model() -> onnx.ModelProto:
    """n = len(xs), ys = xs, t = t_opt, s = s_opt: a sequence input and two optional ones, passed through."""
    seq = helper.make_tensor_sequence_value_info
    opt_tensor = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [3]))
    opt_seq = helper.make_optional_type_proto(helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.INT64, None)))
    nodes = [helper.make_node("SequenceLength", ["xs"], ["n"]), helper.make_node("Identity", ["xs"], ["ys"]),
             helper.make_node("Identity", ["t_opt"], ["t"]), helper.make_node("Identity", ["s_opt"], ["s"])]
    graph = helper.make_graph(nodes, "seq", [seq("xs", TensorProto.FLOAT, ["rows", 3]),
                                             helper.make_value_info("t_opt", opt_tensor),
                                             helper.make_value_info("s_opt", opt_seq)],
                              [helper.make_tensor_value_info("n", TensorProto.INT64, []),
                               seq("ys", TensorProto.FLOAT, ["rows", 3]), helper.make_value_info("t", opt_tensor),
                               helper.make_value_info("s", opt_seq)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_inputs_describe_sequences_and_optionals() -> None:
    xs, t_opt, s_opt = model_inputs(_seq_model())
    assert (xs.kind, xs.sequence, xs.dtype, xs.dims, xs.npz_keys()) == ("sequence", True, np.float32, (None, 3),
                                                                         "xs/<i>")
    assert (t_opt.kind, t_opt.sequence, t_opt.dims, t_opt.npz_keys()) == ("optional", False, (3,), "t_opt (optional)")
    # elements of no declared shape: any rank
    assert (s_opt.kind, s_opt.sequence, s_opt.dtype, s_opt.dims) == ("optional", True, np.int64, None)


def test_npz_sequence_and_present_optionals(tmp_path: Path) -> None:
    xs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.full((1, 3), 7, np.float32)]  # element shapes differ
    path = _npz(tmp_path, **{"xs/1": xs[1], "xs/0": xs[0], "t_opt": np.ones(3, np.float32),
                             "s_opt/0": np.array([4, 5], np.int64), "s_opt/1": np.array(6, np.int64)})
    (feed,) = load_calibration(path, _seq_model()).feeds
    assert [a.shape for a in feed["xs"]] == [(2, 3), (1, 3)] and [a.shape for a in feed["s_opt"]] == [(2,), ()]
    out = outputs(_seq_model(), feed, level="all")
    assert int(out["n"]) == 2
    for got, want in zip(out["ys"], xs, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out["t"], np.ones(3, np.float32))
    assert [a.tolist() for a in out["s"]] == [[4, 5], 6]


def test_npz_empty_sequence_and_absent_optionals(tmp_path: Path) -> None:
    path = _npz(tmp_path, **{"xs/__empty__": np.zeros(0, np.float32)})  # no t_opt, no s_opt: both absent
    (feed,) = load_calibration(path, _seq_model()).feeds
    assert feed == {"xs": [], "t_opt": None, "s_opt": None}
    out = outputs(_seq_model(), feed, level="all")
    assert int(out["n"]) == 0 and out["ys"] == [] and out["t"] is None and out["s"] is None


@pytest.mark.parametrize("value", [[], [np.zeros((0, 3), np.float32)], [np.ones((2, 3), np.float32)] * 3])
def test_npz_encoding_round_trips(tmp_path: Path, value: list[np.ndarray]) -> None:
    arrays = {**encode("xs", value, np.float32), **encode("t_opt", None), **encode("s_opt", [np.arange(3)])}
    (feed,) = load_calibration(_npz(tmp_path, **arrays), _seq_model()).feeds
    assert len(feed["xs"]) == len(value) and feed["t_opt"] is None
    for got, want in zip(feed["xs"], value, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    np.testing.assert_array_equal(feed["s_opt"][0], np.arange(3))


@pytest.mark.parametrize("arrays, message", [
    ({"xs/0": np.ones((1, 3), np.float32), "xs/1": np.ones((1, 3), np.int32)},
     r"calib.npz: input 'xs' element 1 has dtype int32, expected float32$"),
    ({"xs/0": np.ones((1, 4), np.float32)}, r"input 'xs' element 0 has shape \(1, 4\), expected \(\?, 3\)$"),
    ({"xs/0": np.ones((1, 3), np.float32), "xs/2": np.ones((1, 3), np.float32)},
     "sequence 'xs' has elements up to xs/2 but no xs/1"),
    ({"xs/0": np.ones((1, 3), np.float32), "xs/__empty__": np.zeros(0, np.float32)},
     "sequence 'xs' has both xs/__empty__ and elements"),
    ({"xs": np.ones((2, 3), np.float32)}, r"input 'xs' is a sequence: store its elements as arrays xs/0, xs/1"),
    ({"t_opt": np.ones(3, np.float32)}, r"no array for input 'xs'; expected arrays: xs/<i>, t_opt \(optional\), "
                                        r"s_opt/<i> \(optional\)$"),
    ({"xs/0": np.ones((1, 3), np.float32), "xs/x": np.ones(3, np.float32)}, "array 'xs/x' is not a model input"),
    ({"xs/0": np.ones((1, 3), np.float32), "t_opt": np.ones((2, 3), np.float32)},
     r"inputs hold different numbers of samples \(xs: 1, t_opt: 2\)"),
])
def test_npz_sequence_errors_name_the_input(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        load_calibration(_npz(tmp_path, **arrays), _seq_model())


def test_fed_values_must_fit_their_kind() -> None:
    good = {"xs": [np.ones((1, 3), np.float32)], "t_opt": None, "s_opt": None}
    assert load_calibration(None, _seq_model(), zoo_feeds=[good]).feeds == [good]
    with pytest.raises(CalibrationError, match="zoo: input 'xs' is a sequence: expected a list of arrays, got ndarray"):
        load_calibration(None, _seq_model(), zoo_feeds=[{**good, "xs": np.ones((1, 3), np.float32)}])
    with pytest.raises(CalibrationError, match="zoo: input 't_opt' is an optional tensor, not a sequence"):
        load_calibration(None, _seq_model(), zoo_feeds=[{**good, "t_opt": [np.ones(3, np.float32)]}])
    with pytest.raises(CalibrationError, match="zoo: input 'x' is None; only an optional input may be absent"):
        load_calibration(None, _masked_model(), zoo_feeds=[{"x": None, "mask": np.ones((1, 4), np.int64)}])


def test_random_data_for_a_sequence_is_refused_naming_it() -> None:
    # No length of a random sequence is a sensible guess; an optional tensor gets a random tensor.
    with pytest.raises(CalibrationError, match=r"--calib random: input 'xs' is a sequence, and random data has no "
                                               r"sensible length; pass samples with --calib \(an .npz with arrays "
                                               r"xs/0, xs/1, ...\)"):
        load_calibration("random", _seq_model())
    graph = helper.make_graph([helper.make_node("Identity", ["t_opt"], ["t"])], "opt",
                              [helper.make_value_info("t_opt", helper.make_optional_type_proto(
                                  helper.make_tensor_type_proto(TensorProto.FLOAT, [3])))],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])])
    (feed,) = load_calibration("random", helper.make_model(graph), n=1).feeds
    assert feed["t_opt"].shape == (3,) and feed["t_opt"].dtype == np.float32


def test_map_input_is_a_clear_refusal() -> None:
    map_type = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    graph = helper.make_graph([helper.make_node("Identity", ["m"], ["o"])], "map",
                              [helper.make_value_info("m", map_type)], [helper.make_value_info("o", map_type)])
    with pytest.raises(CalibrationError, match=r"input 'm' is a map: .* hold tensors, sequences of tensors and "
                                               r"optionals of those only \(a known limit\)"):
        load_calibration("random", helper.make_model(graph))
