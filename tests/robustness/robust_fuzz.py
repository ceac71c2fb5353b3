"""The seeded mutation fuzzer behind bench/fuzz.py and tests/robustness/test_fuzz.py.

Seed models are small real ones: the tiny CNN of robust_inputs, the zoo's digits-cnn and mnist-resnet exports,
and three models of the onnx wheel's backend test data (sequence ops, Reshape/Transpose, Tile). Mutant ``i`` of
fuzz seed ``s`` draws, from an rng seeded with ``(s, i)`` alone, a seed model, one mutator of
robust_mutators (byte edits, ModelProto field edits, two or three of those stacked, calibration edits) and a
command (build with cleanup,fuse; build with quantize-int8 too; or inspect). It runs through
robust_harness.run_edgec (a forked, memory-capped child with a timeout) and gets one class of CLASSES; those of
FAILURES break the error contract.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import onnx
import robust_inputs
from robust_harness import Run, RunTimeoutError, run_edgec, snapshot
from robust_mutators import BYTE_MUTATORS, CALIB_MUTATORS, PROTO_MUTATORS

BACKEND_SEEDS = {"test_sequence_model1": "simple", "test_PixelShuffle": "pytorch-converted",
                 "test_operator_repeat_dim_overflow": "pytorch-operator"}
SEED_MODELS = ("tiny-cnn", "digits-cnn", "mnist-resnet", *BACKEND_SEEDS)
STACKED = "stacked"  # 2 or 3 ModelProto field edits on one model
MUTATORS = (*BYTE_MUTATORS, *PROTO_MUTATORS, STACKED, *CALIB_MUTATORS)
N_CALIB = 8  # quantize-int8 asks for 8 samples
BUILD = ["build", "model.onnx", "--target", "cpu-x86", "--calib", "calib.npz", "-o", "out", "-q", "--passes"]
COMMANDS = {"build cleanup,fuse": [*BUILD, "cleanup,fuse"],
            "build cleanup,fuse,quantize-int8": [*BUILD, "cleanup,fuse,quantize-int8"],
            "inspect": ["inspect", "model.onnx", "--target", "cpu-x86"]}
COMMAND_WEIGHTS = (0.75, 0.13, 0.12)
FAILURES = ("traceback", "timeout", "memory", "signal", "multi-line", "other-exit", "wrote-outside")
CLASSES = ("exit-0", "exit-2", *FAILURES)
TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class SeedModel:
    """A valid model (serialized) and calibration data for it: ``N_CALIB`` samples stacked per input."""

    name: str
    model: bytes
    calib: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Mutant:
    """Mutant ``index`` of fuzz seed ``seed``: what was broken, the files and the edgec arguments."""

    seed: int
    index: int
    seed_model: str
    mutator: str
    detail: str
    command: str
    model: bytes
    calib: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How edgec did on one mutant: its class, the exit code and the first stderr line."""

    seed: int
    index: int
    seed_model: str
    mutator: str
    detail: str
    command: str
    cls: str
    code: int | None
    first_line: str
    seconds: float


# --- seeds ------------------------------------------------------------------------------------------------

def _calib_for(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``N_CALIB`` samples of every run-time input (symbolic dims at 1): N(0, 1) floats, small integers."""
    inits = {t.name for t in model.graph.initializer}
    calib = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        sample = rng.standard_normal((N_CALIB, *shape)) if dtype.kind == "f" else rng.integers(0, 4, (N_CALIB, *shape))
        calib[value.name] = sample.astype(dtype)
    return calib


def _seed_proto(name: str) -> onnx.ModelProto:
    if name == "tiny-cnn":
        return robust_inputs.tiny_model()
    if name in BACKEND_SEEDS:
        data = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / BACKEND_SEEDS[name]
        return onnx.load(str(data / name / "model.onnx"))
    from edgec.models.zoo import get_zoo_model

    return onnx.load(str(get_zoo_model(name).onnx_path()))


def seed_models(names: Sequence[str] = SEED_MODELS) -> list[SeedModel]:
    """The seed models, each with its calibration data (seeded: the same on every call)."""
    seeds = []
    for i, name in enumerate(names):
        proto = _seed_proto(name)
        seeds.append(SeedModel(name, proto.SerializeToString(), _calib_for(proto, np.random.default_rng(i))))
    return seeds


# --- mutants ----------------------------------------------------------------------------------------------

def _apply(rng: random.Random, mutator: str, base: SeedModel, calib: dict[str, np.ndarray],
           ) -> tuple[bytes, str] | None:
    """The mutated model bytes and what changed (``calib`` edited in place), or None when it does not apply."""
    if mutator in BYTE_MUTATORS:
        return BYTE_MUTATORS[mutator](rng, base.model)
    if mutator in CALIB_MUTATORS:
        detail = CALIB_MUTATORS[mutator](rng, calib) if calib else None
        return (base.model, detail) if detail else None
    proto = onnx.ModelProto()
    proto.ParseFromString(base.model)
    if mutator == STACKED:
        edits = [PROTO_MUTATORS[rng.choice(list(PROTO_MUTATORS))](rng, proto) for _ in range(rng.choice([2, 3]))]
        detail = " + ".join(e for e in edits if e)
    else:
        detail = PROTO_MUTATORS[mutator](rng, proto)
    return (proto.SerializeToString(), detail) if detail else None


def make_mutant(seeds: Sequence[SeedModel], seed: int, index: int) -> Mutant:
    """Mutant ``index`` of fuzz seed ``seed``: the same seed and index give the same mutant."""
    rng = random.Random(f"edgec-fuzz:{seed}:{index}")
    base = rng.choice(seeds)
    command = rng.choices(list(COMMANDS), COMMAND_WEIGHTS)[0]
    for _ in range(20):  # a mutator that does not apply to this model: draw another
        mutator = rng.choice(MUTATORS)
        calib = dict(base.calib)
        applied = _apply(rng, mutator, base, calib)
        if applied is not None:
            return Mutant(seed, index, base.name, mutator, applied[1], command, applied[0], calib)
    raise RuntimeError(f"no mutator applies to seed model {base.name}")


# --- running and judging ------------------------------------------------------------------------------------

def classify(run: Run | None, wrote_outside: bool = False) -> str:
    """One of CLASSES for a run (None: it timed out)."""
    if run is None:
        return "timeout"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    if "MemoryError" in run.stderr or "bad_alloc" in run.stderr or run.code == -9:
        return "memory"
    if run.code < 0:
        return "signal"
    if "Traceback" in run.stderr:
        return "traceback"
    if wrote_outside:
        return "wrote-outside"
    if run.code == 0:
        return "exit-0"
    if run.code == 2:
        return "exit-2" if len(lines) == 1 else "multi-line"
    return "other-exit"


def _write(mutant: Mutant, workdir: pathlib.Path) -> None:
    (workdir / "model.onnx").write_bytes(mutant.model)
    with open(workdir / "calib.npz", "wb") as file:
        np.savez(file, **mutant.calib)


def run_mutant(mutant: Mutant, root: pathlib.Path, timeout_s: float = TIMEOUT_S) -> Outcome:
    """Run ``mutant`` in a fresh folder under ``root`` (removed afterwards) and classify the run."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.index}-", dir=root))
    try:
        _write(mutant, workdir)
        before = snapshot(workdir)
        start = time.perf_counter()
        try:
            run: Run | None = run_edgec(COMMANDS[mutant.command], workdir, {"EDGEC_CACHE": str(workdir / "cache")},
                                        timeout_s=timeout_s)
        except RunTimeoutError:
            run = None
        seconds = time.perf_counter() - start
        allowed = ("out", ".edgec-case-logs", "cache")
        # OUT.report.html (and a search's OUT.pareto.png) are the bundle's documented sidecars.
        new = [p for p in snapshot(workdir) - before
               if not p.startswith("out.") and not any(p == a or p.startswith(a + os.sep) for a in allowed)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cls = classify(run, bool(new))
    lines = [line for line in (run.stderr if run else "").splitlines() if line.strip()]
    first = f"wrote {sorted(new)[:3]}" if cls == "wrote-outside" else _culprit_line(lines)
    return Outcome(mutant.seed, mutant.index, mutant.seed_model, mutant.mutator, mutant.detail, mutant.command, cls,
                   run.code if run else None, first[:300], seconds)


def _culprit_line(lines: list[str]) -> str:
    """The last line of a traceback (the exception), else the first stderr line."""
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return lines[0] if lines else ""
