"""Calibration data: model feeds from an .npz, an image folder, a text file, the zoo, or seeded noise."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgec.compiler._inputs import InputSpec, check_sample, fits, model_inputs
from edgec.core import progress
from edgec.core.errors import CalibrationError, ConfigError
from edgec.core.ir import Feeds
from edgec.runtime.safe_npz import NpzError, npz_limit, read_npz
from edgec.runtime.values import decode, group_keys, kind_phrase, value_shape

logger = logging.getLogger(__name__)

RANDOM_WARNING = "calibration uses random data; accuracy figures are not meaningful"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_TEXT_MAX_LEN = 128  # sequence length when the model's is dynamic


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How images become a float input: resize to ``size`` (H, W), scale to [0, 1], then (x - mean) / std.

    ``size`` and ``channels`` default to the model's input; ``mean``/``std`` have 1 or ``channels`` values.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    channels: int | None = None

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else self.size
        if size is not None and (len(size) != 2 or any(int(s) <= 0 for s in size)):
            raise ConfigError(f"[calibration.image] size {self.size!r}: expected [height, width]")
        object.__setattr__(self, "size", tuple(int(s) for s in size) if size is not None else None)
        for key in ("mean", "std"):
            value = getattr(self, key)
            values = (value,) if isinstance(value, int | float) else tuple(float(v) for v in value)
            if not values or (key == "std" and any(v == 0 for v in values)):
                raise ConfigError(f"[calibration.image] {key} {value!r}: expected non-zero numbers")
            object.__setattr__(self, key, values)
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"[calibration.image] layout {self.layout!r}: expected 'NCHW' or 'NHWC'")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"[calibration.image] channels {self.channels!r}: expected 1 or 3")


@dataclasses.dataclass
class CalibrationSet:
    """Feeds for the model, where they came from, and warnings to show the user."""

    feeds: list[Feeds]
    source: str
    warnings: list[str]


@dataclasses.dataclass(frozen=True)
class CalibrationSplit:
    """Calibration samples split for a search or a lossy build: ``fit`` builds, ``held_out`` only scores.

    ``in_sample`` is True when there were too few samples to hold any out: then both parts are the same
    samples, and the scores they give flatter (say so in the report).
    """

    fit: list[Feeds]
    held_out: list[Feeds]
    in_sample: bool
    # Positions of the held-out samples in the calibration data, so a reader can tell which ones scored.
    held_out_indices: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The manifest's record of the split."""
        return {"fit": len(self.fit), "held_out": len(self.held_out), "in_sample": self.in_sample,
                "held_out_indices": list(self.held_out_indices), "rule": HELD_OUT_RULE}


# Every 4th sample is held out, so the held-out part spans the whole file (a folder sorted by class keeps
# each class in both parts); with 2 or 3 samples, the last one is.
HELD_OUT_EVERY = 4
HELD_OUT_RULE = f"every {HELD_OUT_EVERY}th sample (the last one when there are fewer than {HELD_OUT_EVERY})"


def split_calibration(feeds: list[Feeds]) -> CalibrationSplit:
    """Hold out every 4th sample (the last of 2-3) for scoring; one sample is both parts, flagged in-sample."""
    if len(feeds) < 2:
        return CalibrationSplit(list(feeds), list(feeds), in_sample=True, held_out_indices=tuple(range(len(feeds))))
    if len(feeds) < HELD_OUT_EVERY:
        return CalibrationSplit(feeds[:-1], feeds[-1:], in_sample=False, held_out_indices=(len(feeds) - 1,))
    held = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(feeds))]
    return CalibrationSplit([f for f, h in zip(feeds, held, strict=True) if not h],
                            [f for f, h in zip(feeds, held, strict=True) if h], in_sample=False,
                            held_out_indices=tuple(i for i, h in enumerate(held) if h))


def load_calibration(spec: str | None, model: onnx.ModelProto, *, zoo_feeds: list[Feeds] | None = None,
                     image_config: ImagePreprocess | None = None, tokenizer_dir: Path | None = None,
                     n: int = 16, seed: int = 0, allow_nonfinite: bool = False) -> CalibrationSet:
    """Feeds for ``model`` from ``spec`` (None, 'random', .npz, image folder, .txt); at most ``n`` samples.

    Samples holding NaN or infinity are refused unless ``allow_nonfinite``.
    """
    inputs = model_inputs(model)
    if not inputs:  # a model of constants: one empty feed runs it
        return CalibrationSet([{}], "no inputs", [])
    if spec is None:
        if not zoo_feeds:
            raise CalibrationError("no calibration data: pass --calib PATH (.npz, an image folder, "
                                   "a text file) or --calib random")
        result = CalibrationSet(list(zoo_feeds[:n]), "zoo", [])
    elif spec == "random":
        result = _random(inputs, n, seed)
    else:
        result = _from_path(spec, inputs, image_config, tokenizer_dir, n)
    for index, sample in enumerate(result.feeds):
        check_sample(sample, inputs, result.source)
        if not allow_nonfinite:
            _check_finite(sample, index, result.source)
    return result


def _check_finite(sample: Feeds, index: int, source: str) -> None:
    """NaN or infinity in calibration data skews every range and reference built from it: refused."""
    for name, value in sample.items():
        for array in value if isinstance(value, list | tuple) else [value]:
            if array is None or not hasattr(array, "dtype") or array.dtype.kind not in "fc":
                continue
            finite = np.isfinite(array)
            if not finite.all():
                nan = int(np.isnan(array).sum())
                raise CalibrationError(f"{source}: sample {index} input {name!r} holds {nan} NaN and "
                                       f"{int(finite.size - finite.sum()) - nan} infinite values; if the model "
                                       "expects them, set allow-nonfinite = true in [calibration]")


def _from_path(spec: str, inputs: list[InputSpec], image_config: ImagePreprocess | None,
               tokenizer_dir: Path | None, n: int) -> CalibrationSet:
    path = Path(spec).expanduser()
    if path.is_dir():
        if any(p.suffix.lower() == ".npz" for p in path.iterdir()):
            return _npz_folder(path, inputs, n)
        return _images(path, inputs, image_config, n)
    if not path.exists():
        raise CalibrationError(f"--calib {spec}: no such file or folder")
    if not path.is_file():  # a FIFO or a device would block the read, or never end
        raise CalibrationError(f"--calib {spec}: not a regular file or a folder")
    if path.suffix.lower() == ".npz":
        return _npz(path, inputs, n)
    if path.suffix.lower() == ".txt":
        return _text(path, inputs, tokenizer_dir, n)
    raise CalibrationError(f"--calib {spec}: unsupported calibration file "
                           "(give a .npz, a .txt, an image folder, or 'random')")


# --- random -------------------------------------------------------------------------------------------

def _random(inputs: list[InputSpec], n: int, seed: int) -> CalibrationSet:
    """Seeded N(0, 1) floats, token ids in [0, 1000), ones for masks, zeros for token types."""
    rng = np.random.default_rng(seed)
    for spec in inputs:
        if spec.sequence:  # an optional tensor gets a random tensor; no length for a sequence is a sensible guess
            raise CalibrationError(f"--calib random: input {spec.name!r} is {kind_phrase(spec.kind, True)}, and "
                                   "random data has no sensible length; pass samples with --calib (an .npz "
                                   f"with arrays {spec.name}/0, {spec.name}/1, ...)")
        _refuse_symbolic(spec)
    warnings = [RANDOM_WARNING]
    feeds = [{s.name: _random_array(s, rng) for s in inputs} for _ in range(n)]
    return CalibrationSet(feeds, "random", warnings)


def _refuse_symbolic(spec: InputSpec) -> None:
    """Refuse a symbolic dim past the batch axis: the user must give its size.

    Random data for it would be a guess (a detector at 16x16 pixels breaks its own Resize/Concat shapes).
    """
    dynamic = [axis for axis, d in enumerate(spec.dims) if d is None and axis]
    if not dynamic:
        return
    named = ", ".join(f"{spec.symbols[a] or '?'} (axis {a})" if a < len(spec.symbols) else f"axis {a}"
                      for a in dynamic)
    example = "x".join("N" if d is None and axis in dynamic else str(d or 1) for axis, d in enumerate(spec.dims))
    raise CalibrationError(f"--calib random: input {spec.name!r} has symbolic dims {named}; give their sizes "
                           f"with --input-shape {spec.name}={example}, or pass real samples with --calib")


def _random_array(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(1 if d is None else d for d in spec.dims)  # only the batch axis can still be symbolic
    name = spec.name.lower()
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if spec.dtype.kind == "b" or "mask" in name:
        return np.ones(shape, dtype=spec.dtype)
    if "type" in name:  # token_type_ids: segment 0 is valid for every vocabulary
        return np.zeros(shape, dtype=spec.dtype)
    if spec.dtype.kind in "iu":
        return rng.integers(0, 1000, size=shape).astype(spec.dtype)
    raise CalibrationError(f"random: cannot make random data for input {spec.name!r} of dtype {spec.dtype}")


# --- .npz ---------------------------------------------------------------------------------------------

def _npz(path: Path, inputs: list[InputSpec], n: int) -> CalibrationSet:
    """Arrays keyed by input name: one sample each, or a stack along a new leading axis or the batch axis.

    A sequence input's elements are arrays ``name/0``, ``name/1``, ... (``name/__empty__``, a 0-size array, for
    an empty one): one sample per file. An optional input with no arrays is absent (None) in every sample.
    """
    arrays = _read_npz(path, inputs, n)
    try:
        groups, stray = group_keys(arrays, {s.name: s.sequence for s in inputs})
    except ValueError as err:
        raise CalibrationError(f"{path}: {err}") from err
    expected = ", ".join(s.npz_keys() for s in inputs)
    for spec in inputs:
        if spec.sequence and spec.name in stray:
            raise CalibrationError(f"{path}: input {spec.name!r} is {kind_phrase(spec.kind, True)}: store its "
                                   f"elements as arrays {spec.name}/0, {spec.name}/1, ... "
                                   f"({spec.name}/__empty__ when it is empty), not one array")
        if spec.name not in groups and spec.kind != "optional":
            raise CalibrationError(f"{path}: no array for input {spec.name!r}; expected arrays: {expected}")
    if stray:
        raise CalibrationError(f"{path}: array {stray[0]!r} is not a model input; expected arrays: {expected}")
    per_input = {s.name: [decode(arrays, groups[s.name], True, s.dtype.kind == "O")] if s.sequence
                 else _split_samples(path, arrays[s.name], s) for s in inputs if s.name in groups}
    counts = {name: len(samples) for name, samples in per_input.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise CalibrationError(f"{path}: inputs hold different numbers of samples ({listed})")
    total = next(iter(counts.values()), 1)  # only absent optionals: one sample of them
    if total == 0:
        empty = ", ".join(f"{name!r} (shape {arrays[name].shape})" for name in counts if name in arrays)
        raise CalibrationError(f"{path}: input {empty} is empty: it holds no samples")
    feeds = [{s.name: per_input[s.name][i] if s.name in per_input else None for s in inputs}
             for i in range(min(total, n))]
    return CalibrationSet(feeds, str(path), _cap_warning(path, total, n))


def _npz_folder(folder: Path, inputs: list[InputSpec], n: int) -> CalibrationSet:
    """Every .npz in the folder, in name order, each one sample or a stack; shapes may differ between files.

    This is how a model with symbolic dims is calibrated at several sizes (pages of different H x W,
    text lines of different widths): each sample keeps its own shape through the passes' checks.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".npz" and not p.name.startswith("."))
    feeds: list[Feeds] = []
    for file in files:
        if len(feeds) >= n:
            break
        feeds += _npz(file, inputs, n - len(feeds)).feeds
    left_out = [p.name for p in folder.iterdir() if p.suffix.lower() != ".npz" and not p.name.startswith(".")]
    warnings = [f"{folder}: ignored {len(left_out)} files that are not .npz: {', '.join(sorted(left_out)[:5])}"] \
        if left_out else []
    shapes = {repr([value_shape(v) for v in f.values()]) for f in feeds}
    if len(shapes) > 1:
        logger.info("%s: %d samples in %d distinct shapes", folder, len(feeds), len(shapes))
    return CalibrationSet(feeds, str(folder), warnings)


def _read_npz(path: Path, inputs: list[InputSpec], n: int) -> dict[str, np.ndarray]:
    """The arrays, each member's size checked first against a limit from the inputs' sizes (bombs, huge headers)."""
    if not path.is_file():
        raise CalibrationError(f"{path}: not a regular file")
    sample_bytes = {s.name: math.prod(s.dims) * s.dtype.itemsize for s in inputs
                    if s.dims is not None and all(d is not None for d in s.dims) and s.dtype.kind != "O"}
    try:
        return read_npz(path, npz_limit(sample_bytes, n))
    except NpzError as err:
        raise CalibrationError(f"{path}: cannot read .npz: {err}") from err


def _split_samples(path: Path, arr: np.ndarray, spec: InputSpec) -> list[np.ndarray]:
    """One sample, a stack on a new leading axis, or (for batch 1) a stack along the batch axis."""
    if spec.dtype == object and arr.dtype.kind == "U":
        arr = arr.astype(object)  # ONNX strings: .npz holds them as unicode arrays (object arrays need pickle)
    if arr.dtype != spec.dtype:
        raise CalibrationError(f"{path}: input {spec.name!r} has dtype {arr.dtype}, expected {spec.dtype}")
    dims = spec.dims
    if arr.ndim == len(dims) + 1 and fits(arr.shape[1:], dims):
        return [np.array(arr[i]) for i in range(len(arr))]  # np.array keeps a scalar 0-d; ascontiguousarray would not
    if fits(arr.shape, dims):
        return [arr]
    if arr.ndim == len(dims) and dims and dims[0] == 1 and fits(arr.shape[1:], dims[1:]):
        return [np.ascontiguousarray(arr[i:i + 1]) for i in range(arr.shape[0])]
    raise CalibrationError(f"{path}: input {spec.name!r} has shape {tuple(arr.shape)}, expected "
                           f"{spec.shape_text()} for one sample or a stack of them")


# --- image folder -------------------------------------------------------------------------------------

def _images(folder: Path, inputs: list[InputSpec], cfg: ImagePreprocess | None, n: int) -> CalibrationSet:
    """Images in name order, preprocessed as ``cfg`` says, grouped to the model's batch size."""
    spec = _image_input(folder, inputs)
    warnings = []
    if cfg is None:
        cfg = ImagePreprocess()
        warnings.append(f"{folder}: no [calibration.image] settings; pixels scaled to [0, 1], not normalized")
    from PIL import Image

    size, channels = _image_geometry(folder, spec, cfg)
    batch = spec.dims[0] or 1
    pictures: list[np.ndarray] = []
    skipped: list[str] = []
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    wanted = min(n * batch, sum(p.suffix.lower() in IMAGE_SUFFIXES for p in files))
    with progress.task("reading calibration images", total=wanted) as step:
        for file in files:
            if len(pictures) >= n * batch:
                break
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(file.name)
                continue
            try:
                pictures.append(_read_image(file, size, channels, cfg))
                step()
            # PIL raises UnidentifiedImageError (an OSError) for junk, DecompressionBombError past ~179M pixels
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                skipped.append(f"{file.name} ({_first_line(err)})")
    if skipped:
        warnings.append(f"{folder}: skipped {len(skipped)} non-image files: {', '.join(skipped[:5])}"
                        + (" ..." if len(skipped) > 5 else ""))
    if len(pictures) < batch:
        why = f"; skipped {', '.join(skipped[:3])}" if skipped else ""
        raise CalibrationError(f"{folder}: no readable .png or .jpg images (need {batch} per sample){why}")
    if len(pictures) % batch:
        warnings.append(f"{folder}: left out {len(pictures) % batch} images that do not fill a batch of {batch}")
    feeds = [{spec.name: np.stack(group).astype(spec.dtype)} for group in _batches(pictures, batch)]
    return CalibrationSet(feeds, str(folder), warnings)


def _image_input(folder: Path, inputs: list[InputSpec]) -> InputSpec:
    if len(inputs) != 1 or inputs[0].kind != "tensor" or inputs[0].dtype.kind != "f" or len(inputs[0].dims) != 4:
        listed = ", ".join(f"{s.name} {s.dtype} {s.shape_text()}" for s in inputs)
        raise CalibrationError(f"{folder}: image calibration needs a model with one 4-d float input; "
                               f"the model has: {listed}")
    return inputs[0]


def _image_geometry(folder: Path, spec: InputSpec, cfg: ImagePreprocess) -> tuple[tuple[int, int], int]:
    """(H, W) and channels from the config or the model; they must agree where both are given."""
    c_axis, h_axis, w_axis = (1, 2, 3) if cfg.layout == "NCHW" else (3, 1, 2)
    model_hw = (spec.dims[h_axis], spec.dims[w_axis])
    size = cfg.size or model_hw
    if None in size:
        raise CalibrationError(f"{folder}: the model's image size is dynamic; set [calibration.image] size")
    if any(m is not None and m != s for m, s in zip(model_hw, size, strict=True)):
        raise CalibrationError(f"{folder}: [calibration.image] size {size} does not match input "
                               f"{spec.name!r} {spec.shape_text()} ({cfg.layout})")
    channels = cfg.channels or spec.dims[c_axis] or 3
    if channels not in (1, 3) or spec.dims[c_axis] not in (None, channels):
        raise CalibrationError(f"{folder}: input {spec.name!r} {spec.shape_text()} ({cfg.layout}) does not "
                               f"take {channels}-channel images")
    for key in ("mean", "std"):
        if len(getattr(cfg, key)) not in (1, channels):
            raise CalibrationError(f"{folder}: [calibration.image] {key} needs 1 or {channels} values")
    return (int(size[0]), int(size[1])), channels  # type: ignore[arg-type]


def _read_image(file: Path, size: tuple[int, int], channels: int, cfg: ImagePreprocess) -> np.ndarray:
    """One image as (C, H, W) or (H, W, C) float32, normalized."""
    from PIL import Image

    with Image.open(file) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32).reshape(size[0], size[1], channels) / 255.0
    pixels = (pixels - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return pixels.transpose(2, 0, 1) if cfg.layout == "NCHW" else pixels


def _batches(items: list[Any], batch: int) -> Iterator[list[Any]]:
    for start in range(0, len(items) - batch + 1, batch):
        yield items[start:start + batch]


# --- text file ----------------------------------------------------------------------------------------

def _text(path: Path, inputs: list[InputSpec], tokenizer_dir: Path | None, n: int) -> CalibrationSet:
    """One sentence per line, tokenized and padded/truncated to the model's sequence length."""
    specs = {s.name: s for s in inputs}
    if "input_ids" not in specs or any(name not in TOKEN_INPUTS or s.kind != "tensor" for name, s in specs.items()):
        raise CalibrationError(f"{path}: text calibration needs inputs among {', '.join(TOKEN_INPUTS)} "
                               f"with input_ids; the model has: {', '.join(specs)}")
    if tokenizer_dir is None:
        raise CalibrationError(f"{path}: text calibration needs a tokenizer: build a Hugging Face folder that "
                               "holds one (tokenizer.json, vocab.txt), or set [calibration] tokenizer")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise CalibrationError(f"{path}: not UTF-8 text ({_first_line(err)})") from err
    ids = specs["input_ids"]
    batch = (ids.dims[0] or 1) if ids.dims else 1
    if len(lines) < batch:
        raise CalibrationError(f"{path}: needs at least {batch} non-empty lines, found {len(lines)}")
    tokenizer = _tokenizer(tokenizer_dir)
    warnings = _cap_warning(path, len(lines) // batch, n)
    seq = ids.dims[1] if len(ids.dims) == 2 else None
    if seq is None:
        seq = min(int(getattr(tokenizer, "model_max_length", _TEXT_MAX_LEN)), _TEXT_MAX_LEN)
        warnings.append(f"{path}: the model's sequence length is dynamic; padded sentences to {seq} tokens")
    feeds = [_encode(tokenizer, group, specs, seq) for group in _batches(lines, batch)][:n]
    return CalibrationSet(feeds, str(path), warnings)


def _tokenizer(tokenizer_dir: Path) -> Any:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, ImportError... for bad folders
        raise CalibrationError(f"{tokenizer_dir}: cannot load a tokenizer ({_first_line(err)})") from err


def _encode(tokenizer: Any, lines: list[str], specs: dict[str, InputSpec], seq: int) -> Feeds:
    encoded = tokenizer(lines, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    feeds = {}
    for name, spec in specs.items():
        # a tokenizer without segment ids (e.g. RoBERTa-style) still feeds a model that takes them
        values = encoded[name] if name in encoded else np.zeros_like(encoded["input_ids"])
        feeds[name] = np.asarray(values).astype(spec.dtype)
    return feeds


def _cap_warning(path: Path, total: int, n: int) -> list[str]:
    return [f"{path}: used the first {n} of {total} samples"] if total > n else []


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
