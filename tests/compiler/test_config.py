"""edgec.toml build files: merged under CLI flags, unknown keys named with their file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgec.compiler.config import make_build_config, parse_pass_list
from edgec.core.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgec.toml"
    path.write_text(text)
    return path


def test_file_values_are_used_and_cli_flags_win(tmp_path):
    cfg_path = _write(tmp_path, 'target = "android-arm64"\npasses = ["cleanup"]\nformat = "zip"\n'
                                '[calibration]\nsource = "random"\nsamples = 4\n'
                                '[pass-options.cleanup]\nfold_constants = false\n')
    cfg = make_build_config({"model": "m.onnx", "output": "out", "target": "cpu-x86", "passes": None}, cfg_path)
    assert cfg.target == "cpu-x86"  # the flag wins
    assert cfg.passes == ("cleanup",) and cfg.fmt == "zip"
    assert cfg.calib == "random" and cfg.calib_samples == 4
    assert cfg.pass_options == {"cleanup": {"fold_constants": False}}
    assert cfg.output == Path("out")


def test_unknown_key_names_file_and_key(tmp_path):
    cfg_path = _write(tmp_path, 'target = "cpu-x86"\npassess = ["fuse"]\n')
    with pytest.raises(ConfigError, match=r"edgec.toml: unknown key 'passess'"):
        make_build_config({"model": "m.onnx", "output": "o"}, cfg_path)


def test_unknown_calibration_key(tmp_path):
    cfg_path = _write(tmp_path, '[calibration]\nsrc = "x.npz"\n')
    with pytest.raises(ConfigError, match=r"\[calibration\]: unknown key 'src'"):
        make_build_config({"model": "m.onnx", "output": "o", "target": "cpu-x86"}, cfg_path)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        make_build_config({}, _write(tmp_path, "target = \n"))
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        make_build_config({}, tmp_path / "nope.toml")


def test_missing_target_is_named():
    with pytest.raises(ConfigError, match="missing --target"):
        make_build_config({"model": "m.onnx", "output": "o"}, None)


@pytest.mark.parametrize("value", ["", "fuse,,cleanup", ","])
def test_bad_pass_list(value):
    with pytest.raises(ConfigError, match="--passes"):
        parse_pass_list(value)


def test_unknown_image_preprocess_key(tmp_path):
    cfg_path = _write(tmp_path, '[calibration.image]\nsize = [8, 8]\nmeans = [0.5]\n')
    with pytest.raises(ConfigError, match=r"\[calibration.image\]: unknown key 'means'"):
        make_build_config({"model": "m.onnx", "output": "o", "target": "cpu-x86"}, cfg_path)
