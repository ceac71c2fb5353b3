"""Frontend dispatch: a file, folder, zoo:NAME or module:factory becomes one normalized ONNX model."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import onnx

from edgec.compiler.frontend.normalize import default_opset, needs_opset_upgrade, normalize
from edgec.core.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

_SHAPE = re.compile(r"^([^=\s]+)=(\d+(?:x\d+)*)$")


@dataclasses.dataclass
class LoadedModel:
    """A normalized model and how it came to be.

    ``proto`` has its external data in memory, except for models over 2 GB: those keep tensors that
    point at files in ``base_dir`` (see ``notes``), so the proto is small but cannot be saved elsewhere
    without those files.
    """

    proto: onnx.ModelProto
    source: str
    notes: list[str]
    base_dir: Path | None
    # The model as read, when normalizing upgraded its opset (see confirm_opset_upgrade), and the shapes.
    before_upgrade: onnx.ModelProto | None = None
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # A Hugging Face folder that holds tokenizer files: .txt calibration tokenizes with it.
    tokenizer_dir: Path | None = None


def parse_input_shapes(values: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse repeated ``--input-shape name=1x3x224x224`` values, in order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        match = _SHAPE.match(value.strip())
        if not match:
            raise ConfigError(f"--input-shape {value!r}: expected NAME=D1xD2x... (e.g. x=1x3x224x224)")
        name, dims = match.group(1), tuple(int(d) for d in match.group(2).split("x"))
        if any(d <= 0 for d in dims):
            raise ConfigError(f"--input-shape {value!r}: every dim must be a positive integer")
        if name in shapes:
            raise ConfigError(f"--input-shape {value!r}: input {name!r} given twice")
        shapes[name] = dims
    return shapes


def load_model(source: str, input_shapes: dict[str, tuple[int, ...]] | None = None,
               task: str | None = None) -> LoadedModel:
    """Load ``source`` with the frontend it names, then normalize (opset, input dims, shapes).

    ``task`` (``--task``) is the export task of a Hugging Face folder; other sources refuse it.
    """
    shapes = dict(input_shapes or {})
    base_dir: Path | None = None
    tokenizer_dir = None
    hf_folder = _hf_folder(source)
    if task is not None and hf_folder is None and _names_a_model(source):
        raise ConfigError(f"--task {task}: applies to Hugging Face folders only, and {source} is not one")
    if hf_folder is not None:
        from edgec.compiler.frontend.hf import export_hf, find_tokenizer_dir

        proto, notes, base_dir = export_hf(hf_folder, task)
        tokenizer_dir = find_tokenizer_dir(hf_folder)
    elif source.startswith("zoo:"):
        proto, notes, base_dir, shapes = _from_zoo(source, shapes)
    else:
        proto, notes, base_dir = _from_local(source, shapes)
    before = _copy(proto) if needs_opset_upgrade(proto) else None
    proto, more = normalize(proto, shapes)
    for note in notes + more:
        logger.info("%s: %s", source, note)
    return LoadedModel(proto=proto, source=source, notes=notes + more, base_dir=base_dir,
                       before_upgrade=before if default_opset(proto) != default_opset(before or proto) else None,
                       input_shapes=shapes, tokenizer_dir=tokenizer_dir)


def _hf_folder(source: str) -> Path | None:
    """The folder ``source`` names when it is a Hugging Face checkpoint (a folder with config.json)."""
    from edgec.compiler.frontend.hf import is_hf_checkpoint

    path = Path(source).expanduser()
    return path if not source.startswith("zoo:") and is_hf_checkpoint(path) else None


def _names_a_model(source: str) -> bool:
    """Whether ``source`` is a zoo name, an existing path or a factory spec (else: 'no such file' comes first)."""
    from edgec.compiler.frontend.torch_export import is_factory_spec

    return source.startswith("zoo:") or Path(source).expanduser().exists() or is_factory_spec(source)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


# An opset upgrade must compute what the model as read computes; ONNX's version converter does not
# always (Scan 8 -> 9 drops the batch axis the old op had, and the converted graph reads garbage).
UPGRADE_RTOL = 1e-4


def confirm_opset_upgrade(loaded: LoadedModel, feeds: Sequence[dict]) -> LoadedModel:
    """``loaded``, or the model kept at its own opset when the upgraded one computes something else on ``feeds``."""
    from edgec.compiler.pipeline import reference_outputs
    from edgec.runtime.session import compare_outputs

    if loaded.before_upgrade is None or not feeds:
        return loaded
    try:
        want = reference_outputs(loaded.before_upgrade, feeds)
    except Exception:  # noqa: BLE001 - ORT cannot run the model as read: the upgrade is all there is
        return loaded
    try:
        worst = max(compare_outputs(want, reference_outputs(loaded.proto, feeds)), key=lambda e: e.max_rel)
        if not worst.max_rel > UPGRADE_RTOL:  # NaN-safe: NaN in both is no difference
            return loaded
        why = f"output {worst.name!r} differs by {worst.max_rel:.2g} (relative)"
    except Exception as exc:  # noqa: BLE001 - the converted model does not run
        why = f"does not run ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
    version = default_opset(loaded.before_upgrade)
    proto, more = normalize(loaded.before_upgrade, loaded.input_shapes, upgrade=False)
    kept = [n for n in loaded.notes if not n.startswith("upgraded opset")]
    note = f"kept opset {version}: the model upgraded to opset {default_opset(loaded.proto)} {why}"
    logger.warning("%s: %s", loaded.source, note)
    return dataclasses.replace(loaded, proto=proto, notes=[*kept, *[n for n in more if n not in kept], note],
                               before_upgrade=None)


def _from_local(source: str, shapes: dict[str, tuple[int, ...]],
                ) -> tuple[onnx.ModelProto, list[str], Path | None]:
    """A file or a PyTorch factory spec (Hugging Face folders are handled by load_model)."""
    from edgec.compiler.frontend.onnx_file import read_onnx
    from edgec.compiler.frontend.torch_export import export_factory, is_factory_spec

    path = Path(source).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"{path}: a folder without config.json is not a Hugging Face checkpoint")
    if path.is_file():
        proto, notes = read_onnx(path)
        return proto, notes, path.parent.resolve()
    if is_factory_spec(source):
        proto, notes = export_factory(source, shapes)
        return proto, notes, None
    raise ModelLoadError(f"{source}: no such file or folder (give a .onnx file, a Hugging Face folder, "
                         "zoo:NAME or package.module:factory)")


def _from_zoo(source: str, shapes: dict[str, tuple[int, ...]],
              ) -> tuple[onnx.ModelProto, list[str], Path, dict[str, tuple[int, ...]]]:
    """The zoo model's ONNX; its own input shapes apply unless the user gave others.

    A zoo model exported with symbolic dims keeps them (its calibration data gives the shapes to work at).
    """
    from edgec.compiler.frontend.onnx_file import read_onnx
    from edgec.models.zoo import get_zoo_model

    name = source.removeprefix("zoo:")
    try:
        zoo_model = get_zoo_model(name)
    except KeyError as err:
        raise ModelLoadError(f"{source}: no zoo model named {name!r}") from err
    path = Path(zoo_model.onnx_path())
    proto, notes = read_onnx(path)
    own = {} if zoo_model.dynamic_axes else dict(zoo_model.input_shapes or {})
    merged = {**own, **shapes}
    return proto, [f"zoo model {name} from {path}", *notes], path.parent.resolve(), merged
