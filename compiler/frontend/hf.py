"""Hugging Face frontend: export a local checkpoint folder to ONNX with optimum-onnx (the 'hf' extra)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from edgec.compiler.errors import ModelLoadError
from edgec.compiler.frontend.onnx_file import read_onnx

logger = logging.getLogger(__name__)

EXPORT_OPSET = 18


def is_hf_checkpoint(path: Path) -> bool:
    """A folder with a config.json is taken for a Hugging Face checkpoint."""
    return path.is_dir() and (path / "config.json").is_file()


def export_hf(path: Path) -> tuple[onnx.ModelProto, list[str], Path]:
    """Export ``path`` (offline, task inferred from its config) once; later calls reuse the cached ONNX.

    Returns the proto, notes, and the folder holding the exported files (external data lives there).
    """
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as err:
        logger.debug("optimum.exporters.onnx import failed: %s", err)
        raise ModelLoadError(f"{path}: Hugging Face checkpoints need the 'hf' extra: "
                             "pip install 'edgec[hf]'") from err
    out_dir = _cache_dir(path)
    notes = [f"exported {path} with optimum-onnx at opset {EXPORT_OPSET}"]
    if not _exported_files(out_dir):
        _run_export(main_export, path, out_dir)
    else:
        notes = [f"reused the optimum-onnx export of {path} cached in {out_dir}"]
    files = _exported_files(out_dir)
    if not files:
        raise ModelLoadError(f"{path}: optimum-onnx wrote no .onnx file")
    chosen = next((f for f in files if f.name == "model.onnx"), files[0])
    if len(files) > 1:
        notes.append(f"optimum-onnx wrote {len(files)} models ({', '.join(f.name for f in files)}); "
                     f"using {chosen.name}")
    proto, more = read_onnx(chosen)
    return proto, notes + more, out_dir


def _run_export(main_export: object, path: Path, out_dir: Path) -> None:
    """Export into a scratch folder beside the cache entry, then rename, so a failed run leaves nothing."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hf-export-", dir=out_dir.parent))
    try:
        main_export(str(path), output=str(tmp), task="auto", opset=EXPORT_OPSET,  # type: ignore[operator]
                    local_files_only=True, do_validation=False)
        tmp.rename(out_dir)
    except Exception as err:  # optimum raises ValueError, KeyError, RuntimeError on unsupported models
        shutil.rmtree(tmp, ignore_errors=True)
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path}: optimum-onnx export failed: {text}") from err


def _cache_dir(path: Path) -> Path:
    """A cache entry keyed by the checkpoint's folder and the times its files were last written."""
    root = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
    resolved = path.resolve()
    stamp = [f"{f.name}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in sorted(resolved.iterdir())
             if f.is_file()]
    key = hashlib.sha256("\n".join([str(resolved), *stamp]).encode()).hexdigest()[:16]
    return root / "hf-export" / f"{resolved.name}-{key}"


def _exported_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("*.onnx")) if out_dir.is_dir() else []
