"""The zoo: exports match torch through ORT, trained models reach their floors, feeds are well-formed."""

from __future__ import annotations

import collections
import importlib

import numpy as np
import onnx
import pytest
import torch

from edgec.core.errors import CalibrationError, ConfigError
from edgec.models import minilm
from edgec.models.zoo import ZOO_NAMES, get_zoo_model
from edgec.runtime.session import compare_outputs, make_session, run

BIG = {"resnet18", "resnet50", "mobilenetv2", "mobilenetv3-large", "densenet121", "efficientnet-b0",
       "bert-like", "minilm"}
# The big models' exports are cached under $EDGEC_CACHE/zoo: a cold run exports each once (2-7 s).
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in ZOO_NAMES]

# fp32 ONNX vs torch, max |a-b| / max |a| over the feeds; measured 2e-7 .. 2e-5 (ResNet-50 deepest).
EXPORT_RTOL = 1e-4
ACCURACY_FLOOR = {"digits-cnn": 0.95, "mnist-resnet": 0.95}


def _torch_outputs(name: str, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    zm = get_zoo_model(name)
    module = zm.torch_module()
    assert not module.training
    with torch.no_grad():
        return [{zm.output_name: module(*[torch.from_numpy(f[k]) for k in zm.input_shapes]).numpy()}
                for f in feeds]


@pytest.mark.parametrize("name", PARAMS)
def test_export_matches_torch(name: str) -> None:
    zm = get_zoo_model(name)
    path = zm.onnx_path()
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == list(zm.input_shapes)
    assert [o.name for o in graph.output] == [zm.output_name]
    for value in graph.input:
        symbolic = (zm.dynamic_axes or {}).get(value.name, {})
        declared = value.type.tensor_type.shape.dim
        dims = tuple(d.dim_param if i in symbolic else d.dim_value for i, d in enumerate(declared))
        assert dims == tuple(symbolic.get(i, n) for i, n in enumerate(zm.input_shapes[value.name]))
    feeds = zm.calibration(3)
    expected = _torch_outputs(name, feeds)
    got = [run(make_session(path, level="disabled"), f) for f in feeds]
    (err,) = compare_outputs(expected, got)
    assert err.max_rel < EXPORT_RTOL, err
    assert err.cosine > 0.99999, err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "mobilenetv3-large",
                                  "densenet121", "efficientnet-b0"])
def test_random_cnn_logits_have_sane_scale(name: str) -> None:
    # Fan-in init plus BN statistics from one pass keep logits O(1); stock EfficientNet init gives ~1e-14.
    (out,) = _torch_outputs(name, get_zoo_model(name).calibration(1))
    assert 0.05 < float(out["logits"].std()) < 20.0
    assert np.isfinite(out["logits"]).all()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_calibration_feeds_are_well_formed(name: str) -> None:
    zm = get_zoo_model(name)
    calib, held_out = zm.calibration(4, "calib"), zm.calibration(2, "eval")
    assert len(calib) == 4 and len(held_out) == 2
    for feed in calib + held_out:
        assert list(feed) == list(zm.input_shapes)
        for key, value in feed.items():
            assert value.shape == zm.input_shapes[key]
            assert value.dtype == (np.int64 if key in ("input_ids", "attention_mask") else np.float32)
    key = next(iter(zm.input_shapes))
    assert not np.array_equal(calib[0][key], calib[1][key])
    assert not np.array_equal(calib[0][key], held_out[0][key])
    assert np.array_equal(zm.calibration(1)[0][key], calib[0][key])  # seeded, repeatable


def test_token_feeds_have_valid_ids_and_masks() -> None:
    for feed in get_zoo_model("bert-like").calibration(2):
        assert (feed["attention_mask"] == 1).all()
        assert feed["input_ids"].min() >= 1000 and feed["input_ids"].max() < 30522
    for feed in get_zoo_model("minilm").calibration(4):
        assert feed["input_ids"][0, 0] == 101  # [CLS]
        n_real = int(feed["attention_mask"].sum())
        assert 3 < n_real < 64 and (feed["input_ids"][0, n_real:] == 0).all()  # padded with [PAD]


def test_digit_calibration_comes_from_training_part() -> None:
    from edgec.models.trained import mnist_data

    data = mnist_data()
    assert len(data.x_train) == 4000 and len(data.x_test) == 1000
    calib = get_zoo_model("mnist-resnet").calibration(5)
    assert all(np.array_equal(f["input"][0], x) for f, x in zip(calib, data.x_train, strict=False))
    assert 0.0 <= calib[0]["input"].min() and calib[0]["input"].max() <= 1.0


@pytest.mark.parametrize("name", ["digits-cnn", "mnist-resnet"])
def test_trained_model_reaches_accuracy_floor(name: str) -> None:
    zm = get_zoo_model(name)
    metrics = zm.evaluate(zm.onnx_path())
    assert metrics is not None and metrics["accuracy"] >= ACCURACY_FLOOR[name], metrics
    assert zm.primary_metric == "accuracy"
    assert zm.evaluate(zm.onnx_path().read_bytes()) == metrics  # bytes and paths give the same result


def test_evaluate_detects_a_broken_model() -> None:
    zm = get_zoo_model("digits-cnn")
    model = onnx.load(zm.onnx_path())
    for init in model.graph.initializer:
        if init.name.endswith("weight") and len(init.dims) == 2:  # the final Linear: zero it
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(tuple(init.dims), np.float32), init.name))
    metrics = zm.evaluate(model.SerializeToString())
    assert metrics is not None and metrics["accuracy"] < 0.5


@pytest.mark.slow
def test_minilm_metrics_against_reference() -> None:
    zm = get_zoo_model("minilm")
    metrics = zm.evaluate(zm.onnx_path())
    assert metrics is not None and list(metrics)[0] == zm.primary_metric == "mean_cosine"
    assert metrics["mean_cosine"] > 0.99999 and metrics["retrieval_agreement"] == 1.0
    assert metrics["paraphrase_top1"] >= 0.9  # the sentence file's paraphrase groups are retrievable
    ref = minilm.reference_embeddings()
    noisy = ref + np.random.default_rng(0).normal(0, 0.05, ref.shape).astype(np.float32)
    degraded = minilm.embedding_metrics(noisy)
    assert degraded["mean_cosine"] < 0.8 and degraded["retrieval_agreement"] < 1.0


def test_evaluate_rejects_a_model_with_other_io_names() -> None:
    model = onnx.load(get_zoo_model("digits-cnn").onnx_path())
    model.graph.output[0].name = "probs"
    model.graph.node[-1].output[0] = "probs"
    with pytest.raises(CalibrationError, match="lacks inputs/outputs \\['logits'\\]"):
        get_zoo_model("digits-cnn").evaluate(model.SerializeToString())


def test_random_models_have_no_metric() -> None:
    zm = get_zoo_model("resnet18")
    assert not zm.trained and zm.evaluate(b"not even parsed") is None


def test_sentence_splits() -> None:
    calib, held_out = minilm.sentences("calib"), minilm.sentences("eval")
    assert len(calib.texts) == 150 and len(held_out.texts) == 240
    assert set(calib.groups).isdisjoint(held_out.groups)
    assert all(n == 3 for n in collections.Counter(calib.groups + held_out.groups).values())
    assert len(set(calib.texts + held_out.texts)) == 390  # no sentence is repeated
    # appended groups keep the original ones first, in their split: calibration(n) stays stable
    assert calib.texts[0].startswith("The train to Boston") and calib.groups[:36] == tuple(g // 3 for g in range(36))
    assert held_out.texts[0].startswith("The doctor advised") and held_out.groups[0] == 12
    for split in ("calib", "eval"):  # every sentence fits in SEQ_LEN tokens with room to spare
        assert minilm.tokens(split)[1].sum(1).max() < minilm.SEQ_LEN


def test_sentence_file_markers_are_checked() -> None:
    assert minilm._parse_groups("[eval]\na\nb\n\n[calib]\nc\n") == [("eval", ("a", "b")), ("calib", ("c",))]
    with pytest.raises(ValueError, match="before any"):
        minilm._parse_groups("a sentence\n")
    with pytest.raises(ValueError, match="unknown split marker '\\[train\\]'"):
        minilm._parse_groups("[train]\na\n")


def test_onnx_export_is_cached_and_refreshed_when_stale() -> None:
    zm = get_zoo_model("digits-cnn")
    path = zm.onnx_path()
    mtime = path.stat().st_mtime_ns
    assert zm.onnx_path() == path and path.stat().st_mtime_ns == mtime
    path.with_name("model.onnx.stamp").write_text("zoo 0 torch old")
    assert zm.onnx_path() == path and path.stat().st_mtime_ns != mtime
    onnx.checker.check_model(str(path))


STRUCTURE = {
    "mnist-resnet": {"Add": 2, "Concat": 1},  # two identity residual blocks, one DenseNet-style Concat
    "resnet50": {"Add": 16},
    "densenet121": {"Concat": 58},
    "mobilenetv3-large": {"HardSwish": 21, "HardSigmoid": 8},  # 8 SE gates
    "efficientnet-b0": {"Sigmoid": 65},  # 49 SiLU + 16 SE gates
    "bert-like": {"Softmax": 6, "LayerNormalization": 13, "MatMul": 48},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n
                                  for n in STRUCTURE])
def test_graph_structure(name: str) -> None:
    hist = collections.Counter(n.op_type for n in onnx.load(get_zoo_model(name).onnx_path()).graph.node)
    assert {op: hist[op] for op in STRUCTURE[name]} == STRUCTURE[name]


def test_unknown_name_and_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="valid names: resnet18, resnet50"):
        get_zoo_model("resnet19")
    with pytest.raises(ConfigError, match="split"):
        get_zoo_model("resnet18").calibration(2, "train")
    with pytest.raises(CalibrationError, match="the split has 150"):
        get_zoo_model("minilm").calibration(151, "calib")


@pytest.mark.parametrize("factory", ["edgec.models.cnn:mobilenetv3_large", "edgec.models.trained:digits_cnn"])
def test_factories_build_eval_modules(factory: str) -> None:
    module_name, func = factory.split(":")
    module = getattr(importlib.import_module(module_name), func)()
    assert isinstance(module, torch.nn.Module) and not module.training
