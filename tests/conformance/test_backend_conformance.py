"""edgec build over ONNX's own backend test models (bench/conformance.py): CI's fixed sample.

Every 10th case of the installed onnx wheel's backend tests (in kind and name order) and the 9 real
CNNs, each built with ``--passes cleanup`` and ``--passes fuse`` on cpu-x86, the test's own inputs as
calibration (sequences and optionals in edgec's .npz encoding). A case whose own ORT run does not
match its expected outputs is skipped (ORT's limits, not edgec's). The bundle's outputs must match
the expected ones within the test's tolerances; no refusal is allowed. ``make conformance`` runs
every case.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import conformance  # noqa: E402  (bench/ is not a package)


@functools.cache
def _cases() -> dict[str, conformance.Case]:
    return {c.name: c for c in conformance.ci_sample(conformance.load_cases())}


def _sample_names() -> list[str]:
    return list(_cases())


@pytest.mark.parametrize("passes", ["cleanup", "fuse"])
@pytest.mark.parametrize("name", _sample_names())
def test_build_matches_the_backend_test(name, passes, tmp_path):
    case = _cases()[name]
    why_not = conformance.ort_runs_it(case)
    if why_not:
        pytest.skip(f"ORT itself does not pass this test: {why_not}")
    outcome = conformance.run_edgec(case, [passes], tmp_path)
    assert outcome.status == "ok", f"{outcome.status}: {outcome.detail}"
