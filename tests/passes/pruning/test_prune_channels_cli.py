"""prune-channels through `edgec build --config`: options from [pass-options.prune-channels], bad ones exit 2."""

from __future__ import annotations

import json

import pytest
from helpers import build_with_config


def _build(tmp_path, options: str):
    toml = f'passes = ["prune-channels"]\n[pass-options.prune-channels]\n{options}\n'
    return build_with_config(tmp_path, toml, "zoo:digits-cnn", "--target", "cpu-x86")


def test_build_prunes_with_config_options(tmp_path):
    result, out = _build(tmp_path, 'ratio = 0.5\nmode = "constrained"\nimportance = "l1"')
    assert result.exit_code == 0, (result.stdout, result.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    record = next(r for r in manifest["passes"] if r["name"] == "prune-channels")
    assert record["after"]["params"] < record["before"]["params"] / 2
    assert record["stats"]["mode"] == "constrained"


@pytest.mark.parametrize(("options", "fragment"), [
    ("ratio = 1.0", "ratio must be a number in [0, 1)"),
    ("ratio = -0.2", "ratio must be a number in [0, 1)"),
    ('layers = { "no_such_conv" = 0.5 }', "no node named 'no_such_conv'"),
    ('mode = "loose"', "mode must be one of"),
    ("ratios = 0.5", "ratios"),
    ('recovery = "magic"', "recovery must be one of"),
    ('rounding = "down"', "rounding must be one of"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, options, fragment):
    result, out = _build(tmp_path, options)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not out.exists()
