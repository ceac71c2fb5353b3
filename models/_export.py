"""Export a torch module to one self-contained ONNX file (dynamo, opset 18; legacy exporter as fallback)."""

from __future__ import annotations

import contextlib
import io
import logging
import pathlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch

log = logging.getLogger(__name__)

OPSET = 18


def export_onnx(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: pathlib.Path,
                input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: Mapping[str, Mapping[int, str]] | None = None) -> str:
    """Write ``module`` to ``path`` (weights inside the file); returns the exporter used.

    The dynamo exporter is tried first; if it raises, the TorchScript exporter is used instead.
    ``dynamic_axes`` (input or output name -> {axis: dim name}) leaves those dims symbolic.
    """
    common = dict(opset_version=OPSET, input_names=list(input_names), output_names=list(output_names))
    if dynamic_axes:
        common["dynamic_axes"] = {name: dict(axes) for name, axes in dynamic_axes.items()}
    start = time.perf_counter()
    try:
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, verbose=False,
                              optimize=True, **common)
        used = "dynamo"
    except Exception as exc:  # noqa: BLE001 - any dynamo failure falls back to the legacy exporter
        log.warning("dynamo export failed (%s: %s); using the legacy exporter", type(exc).__name__, exc)
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, **common)
        used = "legacy"
    log.info("exported %s with %s in %.1f s", path, used, time.perf_counter() - start)
    return used


_NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute the exporter's progress prints, warnings and harmless optimizer logs for one export."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
