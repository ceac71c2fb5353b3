"""Helpers the tests share: a model's outputs in ORT, the before/after numeric check, and a CLI build from TOML.

tests/conftest.py puts this folder on sys.path (pytest's default prepend import mode), so any test under
tests/ imports them as ``from helpers import outputs``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from click.testing import CliRunner, Result

from edgec.compiler.cli import cli
from edgec.core.ir import Feeds, to_proto
from edgec.runtime.session import make_session, run

ModelSource = onnx.ModelProto | ir.Model | bytes | str | os.PathLike[str]


def _session_source(model: ModelSource, check: bool, full_check: bool) -> bytes | str | os.PathLike[str]:
    """What make_session takes (serialized bytes or a path), after the onnx checker when asked."""
    if isinstance(model, ir.Model):
        model = to_proto(model)
    if isinstance(model, onnx.ModelProto):
        if check or full_check:
            onnx.checker.check_model(model, full_check=full_check)
        return model.SerializeToString()
    if check or full_check:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(os.fspath(model))
        onnx.checker.check_model(proto, full_check=full_check)
    return model


def outputs(model: ModelSource, feeds: Feeds | Sequence[Feeds], *, level: str = "disabled", check: bool = False,
            full_check: bool = False) -> dict[str, Any] | list[dict[str, Any]]:
    """Run ``model`` in one real ORT CPU session: outputs by name for one feed dict, a list of them for a list.

    ``level`` is ORT's graph optimization level ("disabled" by default, so only the model itself is compared);
    ``check`` / ``full_check`` run onnx's checker on the model first.
    """
    session = make_session(_session_source(model, check, full_check), level=level)
    if isinstance(feeds, Mapping):
        return run(session, feeds)
    return [run(session, f) for f in feeds]


def assert_outputs_close(before: ModelSource, after: ModelSource, feeds: Feeds | Sequence[Feeds], *,
                         atol: float, rtol: float = 0.0) -> None:
    """Run both models on the same feeds; each output of ``after`` within ``atol + rtol * |before|``."""
    runs = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    for ref, got in zip(outputs(before, runs), outputs(after, runs), strict=True):
        assert list(ref) == list(got), (list(ref), list(got))
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=atol, err_msg=name)


def build_with_config(tmp_path: Path, toml: str, *args: str) -> tuple[Result, Path]:
    """``edgec build *args --config tmp_path/edgec.toml -o tmp_path/bundle --quiet`` through click's runner."""
    config = tmp_path / "edgec.toml"
    config.write_text(toml)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["build", *args, "--config", str(config), "-o", str(out), "--quiet"])
    return result, out
