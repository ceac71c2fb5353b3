"""CI's sample of the mutation fuzzer (bench/fuzz.py runs 2,000): mutants 0..199 of fuzz seed 0.

Each mutant (a byte, ModelProto field or calibration edit of a small real model) runs ``edgec build`` or
``edgec inspect`` in the harness's memory-capped child and must exit 0, or exit 2 with one stderr line: never a
traceback, a hang, the memory cap, a signal, a multi-line error, another exit code, or a file written outside
the output path. The mutants run in chunks, so that xdist spreads them over its workers.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from robust_fuzz import COMMANDS, FAILURES, MUTATORS, SEED_MODELS, Outcome, make_mutant, run_mutant, seed_models

FUZZ_SEED = 0
N_MUTANTS = 200
CHUNK = 20


@pytest.fixture(scope="module")
def seeds():
    return seed_models()


def _describe(o: Outcome) -> str:
    return (f"{o.cls} (exit {o.code}): seed {o.seed} index {o.index}, {o.seed_model}, {o.mutator}: {o.detail}; "
            f"{o.command}: {o.first_line}")


@pytest.mark.parametrize("chunk", range(N_MUTANTS // CHUNK))
def test_mutants_keep_the_error_contract(chunk: int, seeds, tmp_path: pathlib.Path) -> None:
    outcomes = [run_mutant(make_mutant(seeds, FUZZ_SEED, i), tmp_path)
                for i in range(chunk * CHUNK, (chunk + 1) * CHUNK)]
    bad = [o for o in outcomes if o.cls in FAILURES]
    assert not bad, "\n".join(map(_describe, bad))
    assert all(o.cls in ("exit-0", "exit-2") for o in outcomes)


def test_the_sample_covers_every_mutator_seed_model_and_command(seeds) -> None:
    mutants = [make_mutant(seeds, FUZZ_SEED, i) for i in range(N_MUTANTS)]
    assert {m.mutator for m in mutants} == set(MUTATORS)
    assert {m.seed_model for m in mutants} == set(SEED_MODELS)
    assert {m.command for m in mutants} == set(COMMANDS)


@pytest.mark.parametrize("index", [0, 77, 199])
def test_a_mutant_is_reproduced_by_its_seed_and_index(seeds, index: int) -> None:
    first, again = make_mutant(seeds, FUZZ_SEED, index), make_mutant(seed_models(), FUZZ_SEED, index)
    assert (first.mutator, first.detail, first.model, first.command) == \
        (again.mutator, again.detail, again.model, again.command)
    assert first.calib.keys() == again.calib.keys()
    for key in first.calib:  # NaN where the other has NaN counts as equal
        np.testing.assert_array_equal(first.calib[key], again.calib[key])
