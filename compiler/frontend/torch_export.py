"""PyTorch frontend: build an nn.Module from ``package.module:factory`` and export it to ONNX."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx

from edgec.core.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

EXPORT_OPSET = 18
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_factory_spec(source: str) -> bool:
    """True for 'package.module:factory'."""
    return bool(_SPEC.match(source))


def export_factory(spec: str, input_shapes: dict[str, tuple[int, ...]] | None,
                   ) -> tuple[onnx.ModelProto, list[str]]:
    """Export the factory's module on float32 random inputs of the given shapes (in the given order).

    Inputs are passed positionally in the order of ``input_shapes`` and named after its keys. They are
    float32 N(0, 1), except token inputs, which are int64: ``*mask*`` ones, ``*type_ids`` zeros, other
    ``*ids`` in [0, 100) (so Embedding layers see valid indices).
    The dynamo exporter is tried first; if it raises, the legacy TorchScript exporter is used.
    """
    if not input_shapes:
        raise ConfigError(f"{spec}: --input-shape is required for a PyTorch factory "
                          "(e.g. --input-shape x=1x3x224x224)")
    import torch  # heavy; only this frontend needs it

    module = build_module(spec)
    generator = torch.Generator().manual_seed(0)
    args = tuple(example_input(name, shape, generator) for name, shape in input_shapes.items())
    with tempfile.TemporaryDirectory(prefix="edgec-export-") as tmp:
        out = Path(tmp) / "model.onnx"
        notes = _export(spec, module, args, list(input_shapes), out)
        proto = onnx.load(str(out))  # the legacy exporter may write external data next to it
    return proto, notes


def build_module(spec: str) -> object:
    """Import the module and call the factory with no arguments; errors name the spec."""
    import torch

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # ImportError, AttributeError, or anything the module raises on import
        raise ModelLoadError(f"{spec}: cannot import the factory ({type(err).__name__}: "
                             f"{_first_line(err)})") from err
    try:
        module = factory()
    except Exception as err:
        raise ModelLoadError(f"{spec}: the factory raised {type(err).__name__}: {_first_line(err)}") from err
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{spec}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def example_input(name: str, shape: tuple[int, ...], generator: object) -> object:
    """A seeded example tensor for one input; see ``export_factory`` for the dtype rules."""
    import torch

    lowered = name.lower()
    if "mask" in lowered:
        return torch.ones(shape, dtype=torch.int64)
    if lowered.endswith("type_ids"):
        return torch.zeros(shape, dtype=torch.int64)
    if lowered.endswith("ids"):
        return torch.randint(0, 100, shape, generator=generator, dtype=torch.int64)
    return torch.randn(*shape, generator=generator)


def _export(spec: str, module: object, args: tuple, names: list[str], out: Path) -> list[str]:
    """Dynamo export, falling back to the legacy exporter; returns notes on what happened."""
    import torch

    try:
        with torch.no_grad(), _quiet():
            torch.onnx.export(module, args, str(out), dynamo=True, opset_version=EXPORT_OPSET,
                              external_data=False, input_names=names, verbose=False)
        return [f"exported {spec} with the dynamo exporter at opset {EXPORT_OPSET}"]
    except Exception as err:  # torch raises TorchExportError, UserError, RuntimeError... on what it rejects
        reason = _reason(err)
        dynamo_err = err
    logger.warning("dynamo export of %s failed (%s); using the legacy exporter", spec, reason)
    notes = [f"dynamo export failed ({reason}); used the legacy exporter"]
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught, _quiet():
            warnings.simplefilter("always")
            torch.onnx.export(module, args, str(out), dynamo=False, opset_version=EXPORT_OPSET,
                              input_names=names)
    except Exception as err:
        raise ModelLoadError(f"{spec}: export failed with both exporters: dynamo: {reason}; "
                             f"legacy: {_first_line(err)}") from dynamo_err
    tracer = sorted({_first_line(w.message).split(". ")[0] for w in caught
                     if w.category.__name__ == "TracerWarning"})
    notes += [f"legacy exporter warned: {text}" for text in tracer[:3]]
    return notes


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress prints off stdout; they go to the debug log instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue():
            logger.debug("exporter output:\n%s", buffer.getvalue())


def _reason(err: BaseException) -> str:
    """The first line; torch wraps the real cause, so name it when there is one."""
    text = _first_line(err)
    cause = err.__cause__
    if cause is None:
        return text
    return f"{text.split('. ')[0]}: {type(cause).__name__}: {_first_line(cause)}"


def _first_line(err: object) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
