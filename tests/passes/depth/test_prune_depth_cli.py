"""prune-depth through `edgec build --config`: a good build, and bad options exit 2 with one line."""

from __future__ import annotations

import json

import pytest
from helpers import build_with_config


def _build(tmp_path, options: str):
    toml = f'passes = ["prune-depth"]\n[pass-options.prune-depth]\n{options}\n'
    return build_with_config(tmp_path, toml, "zoo:mnist-resnet", "--target", "cpu-x86")


def test_build_drops_a_named_block(tmp_path):
    result, out = _build(tmp_path, 'blocks = ["features.5"]\nreplace = true')
    assert result.exit_code == 0, (result.stdout, result.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    record = next(r for r in manifest["passes"] if r["name"] == "prune-depth")
    assert record["stats"]["blocks_dropped"] == ["features.5"]
    assert record["stats"]["replacement"]["features.5"] == "inserted Conv"
    assert record["after"]["nodes"] < record["before"]["nodes"]
    assert any(s["where"] == "features.3" for s in record["skips"])  # the Concat block, with its reason


@pytest.mark.parametrize(("options", "fragments"), [
    ("num_blocks = 5", ("prune-depth", "asks to drop 5 blocks", "2 removable")),
    ('blocks = ["features.7"]', ("prune-depth", "'features.7'", "features.2")),
    ('granularity = "row"', ("granularity", "'row'")),
])
def test_bad_options_exit_2_with_one_line(tmp_path, options, fragments):
    result, out = _build(tmp_path, options)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
