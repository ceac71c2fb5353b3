"""arm64 parity (opt-in): android-arm64 bundles run under qemu in an arm64 root match the host."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
ROOT = os.environ.get("EDGEC_ARM64_ROOT")

pytestmark = pytest.mark.skipif(
    not ROOT or not pathlib.Path(ROOT, "opt/venv/bin/python").exists() or os.geteuid() != 0,
    reason="needs root and a prepared arm64 root: run `make arm64-check` once (about 6 min), then set "
           "EDGEC_ARM64_ROOT=.cache/arm64root")


def test_arm64_matches_host(tmp_path):
    env = {**os.environ, "EDGEC_ARM64_MODELS": os.environ.get("EDGEC_ARM64_MODELS", "mobilenetv2")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "arm64_check.sh"), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600, check=False)
    summary = json.loads((tmp_path / "arm64_check.json").read_text())
    assert summary["arm64_environment"]["machine"] == "aarch64"
    rows = summary["rows"]
    assert rows and all(row["ok"] for row in rows), proc.stdout
    assert {row["bundle"].rsplit("-", 1)[1] for row in rows} == {"fp32", "int8"}
    assert proc.returncode == 0
