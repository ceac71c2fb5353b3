"""The model zoo: named torch models with cached ONNX exports, calibration feeds and held-out metrics.

Random-init models (structure and speed tests): resnet18, resnet50, mobilenetv2, mobilenetv3-large,
densenet121, efficientnet-b0 (``input`` float32 [1, 3, 224, 224] -> ``logits`` [1, 1000]) and bert-like
(``input_ids``/``attention_mask`` int64 [1, 128] -> ``last_hidden_state`` [1, 128, 384]).
yolo-det, random-init too, is a YOLOv8-style detector exported with symbolic batch/height/width
(``images`` float32 [N, 3, H, W], calibrated at 320 x 320 -> ``output0`` [N, 24, A]: 4 box coordinates in
pixels, then 20 class probabilities).
Trained models (accuracy): digits-cnn, mnist-resnet (``input`` -> ``logits`` [1, 10]) and minilm
(``input_ids``/``attention_mask`` int64 [1, 64] -> ``sentence_embedding`` [1, 384]). mnist-det (detection F1) is
yolo-det's architecture at narrower widths, trained on 96 x 96 canvases of 1-3 MNIST digits
(``images`` [N, 3, H, W] -> ``output0`` [N, 14, A]: 4 box coordinates in pixels, then 10 class probabilities).
Everything expensive (exports, weights, reference embeddings) is cached under ``$EDGEC_CACHE/zoo``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import torch

from edgec.core.errors import CalibrationError, ConfigError
from edgec.models import _cache
from edgec.models._export import export_onnx
from edgec.runtime.session import session_options

if TYPE_CHECKING:  # trained.py pulls in scikit-learn and mlxtend lazily; keep the zoo import light
    from edgec.models.trained import DigitsData

# Bump when an architecture, init or export setting changes: cached ONNX files are then re-exported.
ZOO_VERSION = "2"
SPLITS = ("calib", "eval")
_IMAGE = {"input": (1, 3, 224, 224)}
_TOKEN_LOW = 1000  # BERT's vocab ids below 1000 are [PAD], [unused*], [CLS], [SEP], [MASK]...


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One zoo entry. ``family`` picks its data: imagenet | detection | bert | digits | mnist | mnist-det | minilm.

    ``factory`` is the ``package.module:function`` that builds the torch module (usable by the
    PyTorch frontend). ``evaluate`` returns ``primary_metric`` first (higher is better).
    """

    name: str
    description: str
    input_shapes: dict[str, tuple[int, ...]]
    trained: bool
    factory: str
    family: str
    output_name: str
    primary_metric: str | None = None
    dynamic_axes: dict[str, dict[int, str]] | None = None  # symbolic dims of the export (name -> axis -> dim)

    def torch_module(self) -> torch.nn.Module:
        """The torch model in eval mode with its weights (trained ones are trained on first use)."""
        module_name, func = self.factory.split(":")
        return getattr(importlib.import_module(module_name), func)().eval()

    def onnx_path(self) -> pathlib.Path:
        """``$EDGEC_CACHE/zoo/<name>/model.onnx``, exported once (safe under parallel callers)."""
        path = _cache.model_dir(self.name) / "model.onnx"
        stamp = path.with_name("model.onnx.stamp")
        expected = f"zoo {ZOO_VERSION} torch {torch.__version__}"
        with _cache.locked(path):
            if not (path.exists() and stamp.exists() and stamp.read_text() == expected):
                module = self.torch_module()
                feed = self.calibration(1, "calib")[0]
                args = tuple(torch.from_numpy(feed[k]) for k in self.input_shapes)
                _cache.atomic_write(path, lambda tmp: export_onnx(
                    module, args, tmp, list(self.input_shapes), [self.output_name], self.dynamic_axes))
                _cache.write_text(stamp, expected)
        return path

    def calibration(self, n: int = 8, split: str = "calib") -> list[dict[str, np.ndarray]]:
        """``n`` feeds keyed by ONNX input name, batch 1.

        Trained models give real data: ``calib`` from the training part, ``eval`` from the held-out
        part. Random-init models give seeded N(0, 1) images or seeded token ids with an all-ones mask.
        """
        if split not in SPLITS:
            raise ConfigError(f"calibration split {split!r} of zoo model {self.name}: use one of {SPLITS}")
        if n < 1:
            raise CalibrationError(f"zoo model {self.name}: asked for {n} calibration feeds; need at least 1")
        rng = np.random.default_rng(SPLITS.index(split))
        if self.family in ("imagenet", "detection"):
            (name, shape), = self.input_shapes.items()
            return [{name: rng.standard_normal(shape, dtype=np.float32)} for _ in range(n)]
        if self.family == "bert":
            shape = self.input_shapes["input_ids"]
            return [{"input_ids": rng.integers(_TOKEN_LOW, 30522, shape, dtype=np.int64),
                     "attention_mask": np.ones(shape, dtype=np.int64)} for _ in range(n)]
        if self.family == "minilm":
            from edgec.models.minilm import tokens

            ids, mask = tokens(split)
            _check_count(self.name, split, n, len(ids))
            return [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(n)]
        if self.family == "mnist-det":
            from edgec.models.detection import canvases

            split_canvases = canvases(split)
            _check_count(self.name, split, n, len(split_canvases.images))
            return [{"images": split_canvases.feed(i)} for i in range(n)]
        data = _digits(self.family)
        images = data.x_train if split == "calib" else data.x_test
        _check_count(self.name, split, n, len(images))
        return [{"input": images[i:i + 1]} for i in range(n)]

    def evaluate(self, model: bytes | os.PathLike[str], providers: Sequence[str] | None = None,
                 ) -> dict[str, float] | None:
        """Held-out metric of an ONNX model of this entry, through a real ORT session; None if random-init."""
        if not self.trained:
            return None
        source = model if isinstance(model, bytes) else os.fspath(model)
        session = ort.InferenceSession(source, session_options("all", 1),
                                       providers=list(providers or ["CPUExecutionProvider"]))
        self._check_io(session)
        feeds = self.calibration(self._eval_size(), "eval")
        outputs = [session.run([self.output_name], feed)[0] for feed in feeds]
        if self.family == "minilm":
            from edgec.models.minilm import embedding_metrics

            return embedding_metrics(np.concatenate(outputs))
        if self.family == "mnist-det":
            from edgec.models.detection import canvases, detection_metrics

            return detection_metrics(outputs, canvases("eval"))
        labels = _digits(self.family).y_test
        return {"accuracy": float(np.mean([np.argmax(o) == y for o, y in zip(outputs, labels, strict=True)]))}

    def _check_io(self, session: ort.InferenceSession) -> None:
        """The evaluated model must keep this entry's input and output names."""
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        missing = [n for n in self.input_shapes if n not in inputs]
        missing += [] if self.output_name in outputs else [self.output_name]
        if missing:
            raise CalibrationError(f"model evaluated as zoo:{self.name} lacks inputs/outputs {missing}; "
                                   f"it has inputs {sorted(inputs)} and outputs {sorted(outputs)}")

    def _eval_size(self) -> int:
        """How many held-out examples ``evaluate`` runs (all of them)."""
        if self.family == "minilm":
            from edgec.models.minilm import sentences

            return len(sentences("eval").texts)
        if self.family == "mnist-det":
            from edgec.models.detection import canvases

            return len(canvases("eval").images)
        return len(_digits(self.family).y_test)


def _digits(family: str) -> DigitsData:
    from edgec.models.trained import digits_data, mnist_data

    return digits_data() if family == "digits" else mnist_data()


def _check_count(name: str, split: str, n: int, have: int) -> None:
    if n > have:
        raise CalibrationError(f"zoo model {name}: asked for {n} {split!r} feeds; the split has {have}")


def _imagenet(name: str, func: str, what: str) -> ZooModel:
    return ZooModel(name, f"{what}, random init (seed 0), ImageNet shape, 1000 classes", dict(_IMAGE),
                    False, f"edgec.models.cnn:{func}", "imagenet", "logits")


_TOKENS_128 = {"input_ids": (1, 128), "attention_mask": (1, 128)}
_TOKENS_64 = {"input_ids": (1, 64), "attention_mask": (1, 64)}

_ZOO: dict[str, ZooModel] = {m.name: m for m in (
    _imagenet("resnet18", "resnet18", "ResNet-18"),
    _imagenet("resnet50", "resnet50", "ResNet-50 (v1.5)"),
    _imagenet("mobilenetv2", "mobilenetv2", "MobileNetV2 1.0"),
    _imagenet("mobilenetv3-large", "mobilenetv3_large", "MobileNetV3-Large (SE, hardswish)"),
    _imagenet("densenet121", "densenet121", "DenseNet-121"),
    _imagenet("efficientnet-b0", "efficientnet_b0", "EfficientNet-B0 (SE, SiLU)"),
    ZooModel("bert-like", "BERT encoder 6L/384H/12 heads/FFN 1536, random init (seed 0), seq 128",
             dict(_TOKENS_128), False, "edgec.models.transformer:bert_like", "bert", "last_hidden_state"),
    ZooModel("yolo-det", "YOLOv8-style detector (C2f, SPPF, SiLU as x*sigmoid(x), nearest upsampling, DFL "
             "head; half of YOLOv8n's widths, 20 classes), random init, dynamic batch/height/width",
             {"images": (1, 3, 320, 320)}, False, "edgec.models.yolo:yolo_det", "detection", "output0",
             dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}),
    ZooModel("digits-cnn", "3-conv CNN trained on sklearn 8x8 digits (1437 train / 360 held out)",
             {"input": (1, 1, 8, 8)}, True, "edgec.models.trained:digits_cnn", "digits", "logits",
             "accuracy"),
    ZooModel("mnist-resnet", "residual CNN with a channel Concat, trained on 4000 MNIST digits "
             "(1000 held out)", {"input": (1, 1, 28, 28)}, True, "edgec.models.trained:mnist_resnet",
             "mnist", "logits", "accuracy"),
    ZooModel("mnist-det", "yolo-det's architecture at widths 8..64, 10 classes, trained on 96 x 96 canvases of 1-3 "
             "MNIST digits (train canvases from the 4000 train digits, 500 held-out canvases from the other 1000), "
             "dynamic batch/height/width", {"images": (1, 3, 96, 96)}, True, "edgec.models.detection:mnist_det",
             "mnist-det", "output0", "f1",
             dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}),
    ZooModel("minilm", "all-MiniLM-L6-v2 sentence encoder (mean pooling + L2 norm), seq 64",
             dict(_TOKENS_64), True, "edgec.models.minilm:minilm", "minilm", "sentence_embedding",
             "mean_cosine"),
)}

ZOO_NAMES: tuple[str, ...] = tuple(_ZOO)


def get_zoo_model(name: str) -> ZooModel:
    """The zoo entry ``name``; an unknown name raises ConfigError listing the valid ones."""
    try:
        return _ZOO[name]
    except KeyError:
        raise ConfigError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO_NAMES)}") from None
