"""Hugging Face frontend: export a local checkpoint folder to ONNX with optimum-onnx (the 'hf' extra)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from edgec.compiler.frontend.onnx_file import read_onnx
from edgec.core.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

EXPORT_OPSET = 18
# Files that mark a sentence-transformers folder (its modules: encoder, pooling, normalize).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
SENTENCE_TRANSFORMERS_TASKS = ("feature-extraction", "sentence-similarity")
# Any of these makes the folder a tokenizer AutoTokenizer can load (.txt calibration uses it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")

# config.json ``architectures`` class names, matched whole first, then by suffix; first match wins, so the
# specific heads come before the bare encoder (``*Model``). Unlisted heads (``*ForPreTraining``) need --task.
_ARCHITECTURE_TASKS = {
    "VisionEncoderDecoderModel": "image-to-text",
    "SpeechEncoderDecoderModel": "automatic-speech-recognition",
    "EncoderDecoderModel": "text2text-generation",
}
_SUFFIX_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMultipleChoice", "multiple-choice"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),  # GPT2LMHeadModel
    ("MTModel", "text2text-generation"),  # MarianMTModel
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSemanticSegmentation", "semantic-segmentation"),
    ("ForDepthEstimation", "depth-estimation"),
    ("ForMaskedImageModeling", "masked-im"),
    ("ForAudioClassification", "audio-classification"),
    ("ForAudioFrameClassification", "audio-frame-classification"),
    ("ForXVector", "audio-xvector"),
    ("ForCTC", "automatic-speech-recognition"),
    ("Model", "feature-extraction"),
)
_SPEECH_MODEL_TYPES = ("whisper", "speech_to_text", "moonshine")


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """What optimum-onnx exports: the task, the library that loads the folder, and how they were chosen."""

    task: str
    library: str  # "transformers", "sentence_transformers" or "timm"
    notes: tuple[str, ...]


def is_hf_checkpoint(path: Path) -> bool:
    """A folder with a config.json is taken for a Hugging Face checkpoint."""
    return path.is_dir() and (path / "config.json").is_file()


def find_tokenizer_dir(path: Path) -> Path | None:
    """``path`` when it holds tokenizer files (for .txt calibration), else None."""
    return path.resolve() if any((path / name).is_file() for name in TOKENIZER_FILES) else None


def export_plan(path: Path, task: str | None = None) -> ExportPlan:
    """The export task (``task``, or inferred from config.json and sentence-transformers files) and library."""
    config = _read_config(path)
    st_files = [name for name in SENTENCE_TRANSFORMERS_FILES if (path / name).is_file()]
    timm = "architecture" in config and ("pretrained_cfg" in config or "num_classes" in config)
    if task is not None:
        chosen, why = task, "from --task"
    elif st_files:
        chosen, why = "feature-extraction", f"from the sentence-transformers files ({', '.join(st_files)})"
    elif timm:
        chosen, why = "image-classification", f"from config.json (timm model {config['architecture']})"
    else:
        chosen, why = _task_from_architectures(path, config)
    notes = [f"task {chosen} {why}"]
    library = "timm" if timm else "transformers"
    if st_files and chosen in SENTENCE_TRANSFORMERS_TASKS:
        if sentence_transformers_available():
            library = "sentence_transformers"
        else:
            notes.append("sentence-transformers is not installed: exported the bare transformers encoder "
                         "(last_hidden_state), without the folder's pooling and normalization modules")
    return ExportPlan(chosen, library, tuple(notes))


def sentence_transformers_available() -> bool:
    """Whether optimum can load a sentence-transformers folder whole (encoder, pooling, normalize)."""
    return importlib.util.find_spec("sentence_transformers") is not None


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_path}: cannot read it as JSON ({_first_line(err)})") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object")
    return config


def _task_from_architectures(path: Path, config: dict[str, Any]) -> tuple[str, str]:
    """(task, why) from the first ``architectures`` entry that names a known head; ModelLoadError if none does."""
    architectures = config.get("architectures") or []
    names = [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    for name in names:
        task = _ARCHITECTURE_TASKS.get(name) or _conditional_generation_task(name, config)
        task = task or next((t for suffix, t in _SUFFIX_TASKS if name.endswith(suffix)), None)
        if task:
            return task, f"from config.json architectures ({name})"
    listed = f"architectures {', '.join(names)}" if names else "no 'architectures' entry"
    raise ModelLoadError(f"{path / 'config.json'}: cannot infer the export task ({listed}, no sentence-transformers "
                         "files); pass --task, e.g. --task feature-extraction or --task text-classification")


def _conditional_generation_task(name: str, config: dict[str, Any]) -> str | None:
    """The export task of a ``*ForConditionalGeneration`` model, or None when it is ambiguous.

    Speech recognition for speech models, text-to-text for text ones; a vision-language model is ambiguous
    (image-to-text or image-text-to-text) and needs --task.
    """
    if not name.endswith("ForConditionalGeneration"):
        return None
    if config.get("model_type") in _SPEECH_MODEL_TYPES:
        return "automatic-speech-recognition"
    if "vision_config" in config:
        return None
    return "text2text-generation"


def export_hf(path: Path, task: str | None = None) -> tuple[onnx.ModelProto, list[str], Path]:
    """Export ``path`` (offline; task from ``task`` or inferred from the folder) once; later calls reuse it.

    Returns the proto, notes, and the folder holding the exported files (external data lives there).
    """
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as err:
        logger.debug("optimum.exporters.onnx import failed: %s", err)
        raise ModelLoadError(f"{path}: Hugging Face checkpoints need the 'hf' extra: "
                             "pip install 'edgec[hf]'") from err
    plan = export_plan(path, _known_task(task) if task is not None else None)
    out_dir = _cache_dir(path, plan)
    notes = [*plan.notes, f"exported {path} with optimum-onnx at opset {EXPORT_OPSET}"]
    if not _exported_files(out_dir):
        _run_export(main_export, path, out_dir, plan)
    else:
        notes = [*plan.notes, f"reused the optimum-onnx export of {path} cached in {out_dir}"]
    files = _exported_files(out_dir)
    if not files:
        raise ModelLoadError(f"{path}: optimum-onnx wrote no .onnx file")
    chosen = next((f for f in files if f.name == "model.onnx"), files[0])
    if len(files) > 1:
        notes.append(f"optimum-onnx wrote {len(files)} models ({', '.join(f.name for f in files)}); "
                     f"using {chosen.name}")
    proto, more = read_onnx(chosen)
    return proto, notes + more, out_dir


def _known_task(task: str) -> str:
    """``task`` in optimum's own spelling; a ConfigError naming --task when optimum knows no such task."""
    try:
        from optimum.exporters.tasks import TasksManager
    except ImportError:  # an optimum without TasksManager: let the export itself judge the task
        return task
    name = TasksManager.map_from_synonym(task)
    known = TasksManager.get_all_tasks()
    if name not in known and name.removesuffix("-with-past") not in known:
        raise ConfigError(f"--task {task}: not a task optimum-onnx exports; expected one of {', '.join(known)}")
    return name


def _run_export(main_export: object, path: Path, out_dir: Path, plan: ExportPlan) -> None:
    """Export into a scratch folder beside the cache entry, then rename, so a failed run leaves nothing."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hf-export-", dir=out_dir.parent))
    try:
        main_export(str(path), output=str(tmp), task=plan.task, library_name=plan.library,  # type: ignore[operator]
                    opset=EXPORT_OPSET, local_files_only=True, do_validation=False)
        tmp.rename(out_dir)
    except Exception as err:  # optimum raises ValueError, KeyError, RuntimeError on unsupported models
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"{path}: optimum-onnx export failed (task {plan.task}): {_first_line(err)}") from err


def _cache_dir(path: Path, plan: ExportPlan) -> Path:
    """A cache entry keyed by the folder, its files' sizes and write times, the task, library and opset."""
    root = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
    resolved = path.resolve()
    files = [f for f in resolved.iterdir() if not f.name.startswith(".")]
    files += [f for sub in files if sub.is_dir() for f in sub.iterdir()]  # sentence-transformers module folders
    stamp = [f"{f.relative_to(resolved)}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in sorted(files)
             if f.is_file()]
    export = f"task={plan.task} library={plan.library} opset={EXPORT_OPSET}"
    key = hashlib.sha256("\n".join([str(resolved), export, *stamp]).encode()).hexdigest()[:16]
    return root / "hf-export" / f"{resolved.name}-{key}"


def _exported_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("*.onnx")) if out_dir.is_dir() else []


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
