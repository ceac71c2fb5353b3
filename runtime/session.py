"""ONNX Runtime sessions set up as a target says, and output comparison between two models."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from edgec.core.ir import Feeds
from edgec.targets.profile import TargetProfile

# Sessions that ORT's own tools open (the quantizers' calibration runs) log through the default logger:
# errors only, as edgec's own sessions do (their warnings, CleanUnusedInitializersAndNodeArgs, are noise).
ort.set_default_logger_severity(3)

_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(level: str = "all", threads: int = 1, profile_prefix: str | None = None,
                    optimized_path: str | None = None) -> ort.SessionOptions:
    """Options edgec uses everywhere: one inter-op thread, fixed intra-op count, quiet logs (see log_severity)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = log_severity()
    # Runtime-style .ort files carry fusions for the nodes left to the CPU EP; replay them, as the
    # generated app loaders do. It has no effect on .onnx models.
    opts.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return opts


def log_severity() -> int:
    """ORT's log severity for edgec's sessions, and the default one for sessions ORT's own tools open.

    ``edgec -v`` (logging at INFO) shows ORT's warnings (2). Otherwise edgec's sessions log fatal errors
    only (4): every ORT error also reaches edgec as an exception, which names the file or node on one line,
    and ORT's own log line of it would be a second, colored copy on stderr. The default logger (the
    quantizers' calibration sessions) logs errors (3).
    """
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    ort.set_default_logger_severity(2 if verbose else 3)
    return 2 if verbose else 4


def providers_for(names: Sequence[str]) -> list[str]:
    """Those of ``names`` this onnxruntime build has, in order; CPU is always last."""
    available = set(ort.get_available_providers())
    return [*[n for n in names if n in available and n != "CPUExecutionProvider"], "CPUExecutionProvider"]


def host_providers(target: TargetProfile | None) -> list[str]:
    """The target's EPs that this onnxruntime build has, in order; CPU is always last."""
    return providers_for(target.ep_names if target else [])


def make_session(model: bytes | str | os.PathLike[str], target: TargetProfile | None = None,
                 level: str | None = None, threads: int | None = None) -> ort.InferenceSession:
    """A session on the host with the target's options; ``level``/``threads`` override them."""
    level = level or (target.graph_optimization_level if target else "all")
    threads = threads or (target.intra_op_num_threads if target else 1)
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, session_options(level, threads), providers=host_providers(target))


def run(session: ort.InferenceSession, feeds: Feeds) -> dict[str, Any]:
    """Run once; outputs keyed by name (a sequence output is a list of arrays, an absent optional None)."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@dataclasses.dataclass(frozen=True)
class OutputError:
    """How far one output drifted: max |a-b| relative to max |a|, max |a-b|, and cosine."""

    name: str
    max_rel: float
    max_abs: float
    cosine: float


def _flattened(value: Any) -> list[np.ndarray]:
    """An output's tensors in order: one for a tensor, each element of a sequence, none for an empty optional."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [t for v in value for t in _flattened(v)]
    return [np.asarray(value)]


def _exact_error(name: str, ref: list[np.ndarray], got: list[np.ndarray]) -> OutputError:
    """Strings and other non-numeric outputs: equal or not."""
    same = len(ref) == len(got) and all(a.shape == b.shape and np.array_equal(a, b)
                                        for a, b in zip(ref, got, strict=True))
    return OutputError(name, 0.0, 0.0, 1.0) if same else OutputError(name, float("inf"), float("inf"), 0.0)


def compare_outputs(reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]) -> list[OutputError]:
    """Per-output error over a list of runs (outputs matched by name; order kept from reference).

    Sequence outputs are compared element by element in order; string outputs must be equal; an output
    whose shape changed, or an optional output present in one and absent (None) in the other, is
    infinitely wrong, whatever its values.
    """
    errors = []
    for name in reference[0]:
        if [r[name] is None for r in reference] != [c[name] is None for c in candidate]:
            errors.append(OutputError(name, float("inf"), float("inf"), 0.0))
            continue
        ref_parts = [t for r in reference for t in _flattened(r[name])]
        got_parts = [t for c in candidate for t in _flattened(c[name])]
        if any(t.dtype.kind not in "biufc" for t in [*ref_parts, *got_parts]):
            errors.append(_exact_error(name, ref_parts, got_parts))
            continue
        if [t.shape for t in ref_parts] != [t.shape for t in got_parts]:  # same values, other shape: wrong
            errors.append(OutputError(name, float("inf"), float("inf"), 0.0))
            continue
        ref = np.concatenate([t.astype(np.float64).ravel() for t in ref_parts]) if ref_parts else np.zeros(0)
        got = np.concatenate([t.astype(np.float64).ravel() for t in got_parts]) if got_parts else np.zeros(0)
        if ref.shape != got.shape:
            errors.append(OutputError(name, float("inf"), float("inf"), 0.0))
            continue
        # NaN where the reference has NaN (sqrt of a negative input) and the same infinities agree; any
        # other NaN or infinity is a difference (a NaN error would otherwise compare under every tolerance).
        agree = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
        ref, got = ref[~agree], got[~agree]
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            errors.append(OutputError(name, float("inf"), float("inf"), 0.0))
            continue
        diff = np.abs(ref - got)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        denom = float(np.linalg.norm(ref) * np.linalg.norm(got))
        cosine = float(ref @ got / denom) if denom > 0 else float(max_abs == 0.0)
        errors.append(OutputError(name, max_abs / scale if scale > 0 else max_abs, max_abs, cosine))
    return errors
