"""Bench: a seeded mutation fuzzer over small real models, held to edgec's error contract.

Seed models: the tiny CNN of tests/robustness, the zoo's digits-cnn and mnist-resnet exports, and three models
of the onnx wheel's backend test data. Each mutant (reproducible from ``--seed`` and its index alone) breaks
one thing: bytes of the serialized model (flips, truncation, insertion), a ModelProto field (op type, a node
dropped, duplicated or rewired, an attribute, an initializer's dims/dtype/data or its values, an input's or
output's dtype and dims, opset/IR versions, the outputs, a cycle), two or three such fields at once
("stacked"), or the calibration data (dtype, shape, NaN/Inf/huge values, keys).
It is run as ``edgec build model.onnx --target cpu-x86 --passes cleanup,fuse --calib calib.npz -o out -q``
(13% with quantize-int8 added, 12% ``edgec inspect model.onnx``) in a forked child under the harness's
memory cap and timeout (tests/robustness/robust_harness.py), and classified: exit 0, exit 2 with one stderr
line, or a failure (traceback, timeout, memory, signal, multi-line stderr, another exit code, a file written
outside the output path).

    .venv/bin/python bench/fuzz.py --mutants 2000 --seed 0 [--no-write]

Writes the ``## Fuzzing`` section of bench/RESULTS.md and every outcome to ``.cache/fuzz/seed-<seed>.json``;
each failure is logged with its seed, index and first stderr line (the exception's line for a traceback).
Exits 1 when any mutant broke the contract. CI runs a 200-mutant sample (tests/robustness/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "robustness"))
sys.path.insert(0, str(ROOT / "bench"))

from _results import write_section  # noqa: E402  (bench/ is on sys.path when run)
from robust_fuzz import CLASSES, FAILURES, MUTATORS, Outcome, make_mutant, run_mutant, seed_models  # noqa: E402

log = logging.getLogger("bench.fuzz")


def run_all(n: int, seed: int, timeout_s: float) -> list[Outcome]:
    """Mutants 0..n-1 of ``seed``, one at a time; failures logged as they come."""
    seeds = seed_models()
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as root:
        for index in range(n):
            outcome = run_mutant(make_mutant(seeds, seed, index), pathlib.Path(root), timeout_s)
            outcomes.append(outcome)
            if outcome.cls in FAILURES:
                log.warning("FAIL %s: --seed %d index %d (%s, %s: %s; %s): %s", outcome.cls, seed, index,
                            outcome.seed_model, outcome.mutator, outcome.detail, outcome.command, outcome.first_line)
            if (index + 1) % 100 == 0:
                counts = collections.Counter(o.cls for o in outcomes)
                log.info("%d/%d mutants in %.0f s: %s", index + 1, n, time.perf_counter() - start,
                         ", ".join(f"{c} {counts[c]}" for c in CLASSES if counts[c]))
    return outcomes


def _row(label: str, outcomes: list[Outcome]) -> str:
    counts = collections.Counter(o.cls for o in outcomes)
    return f"| {label} | {len(outcomes)} | " + " | ".join(str(counts[c]) for c in CLASSES) + " |"


def table(outcomes: list[Outcome]) -> str:
    """Counts per class: all mutants, then per mutator, per seed model and per command."""
    head = "| | mutants | " + " | ".join(CLASSES) + " |\n|---|" + "---:|" * (len(CLASSES) + 1)
    rows = [_row("**all**", outcomes)]
    groups = [("mutator", "mutator", MUTATORS), ("seed model", "seed_model", None), ("command", "command", None)]
    for title, field, order in groups:
        keys = order or sorted({getattr(o, field) for o in outcomes})
        rows += [_row(f"{title}: {key}", [o for o in outcomes if getattr(o, field) == key]) for key in keys]
    return head + "\n" + "\n".join(rows)


def _failures(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if o.cls in FAILURES]
    if not bad:
        return "No mutant broke the contract."
    return "Failures (reproduce with `make_mutant(seed_models(), seed, index)`):\n\n" + "\n".join(
        f"- {o.cls}, seed {o.seed} index {o.index} ({o.seed_model}, {o.mutator}: {o.detail}; {o.command}): "
        f"`{o.first_line}`" for o in bad[:50])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per mutant (the harness's default)")
    parser.add_argument("--no-write", action="store_true", help="leave bench/RESULTS.md as it is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.perf_counter()
    outcomes = run_all(args.mutants, args.seed, args.timeout_s)
    minutes = (time.perf_counter() - start) / 60
    out = ROOT / ".cache" / "fuzz" / f"seed-{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1))
    text = table(outcomes)
    log.info("%d mutants in %.1f min; outcomes in %s\n\n%s\n\n%s", len(outcomes), minutes, out, text,
             _failures(outcomes))
    if not args.no_write:
        write_section(
            f"## Fuzzing\n\n{len(outcomes)} mutants of fuzz seed {args.seed} ({minutes:.0f} min, one worker). Classes: "
            "exit-0 built (or inspected); exit-2 refused with one stderr line; the rest break the error contract "
            "(traceback, timeout past the harness's limit, memory: MemoryError or killed past the cap, signal, "
            "multi-line stderr, another exit code, a file written outside the output path).\n\n"
            f"{text}\n\n{_failures(outcomes)}\n\nProduced by:\n\n```\n.venv/bin/python bench/fuzz.py "
            f"--mutants {args.mutants} --seed {args.seed}\n```\n")
    return 1 if any(o.cls in FAILURES for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
