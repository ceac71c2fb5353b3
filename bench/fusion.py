"""Bench: zoo models before and after edgec's fuse pass, and ORT's transformers optimizer on BERT-likes.

Every variant runs in ONNX Runtime's CPU EP at ORT_ENABLE_ALL with 1 intra-op and 1 inter-op thread;
variants are timed round-robin (edgec.runtime.timing.interleaved_medians) so machine noise hits all
alike. Writes (or replaces) the ``## Fusion`` section of bench/RESULTS.md.

    .venv/bin/python bench/fusion.py [--models bert-like,minilm] [--rounds 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import pathlib
import sys
import tempfile

import numpy as np
import onnx
from _results import write_section  # noqa: E402  (bench/ is on sys.path when run)

from edgec.compiler.calibration import load_calibration
from edgec.compiler.pipeline import run_pipeline
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.timing import interleaved_medians
from edgec.targets.registry import get_target

log = logging.getLogger("bench.fusion")

ZOO = ["resnet18", "resnet50", "mobilenetv2", "mobilenetv3-large", "densenet121", "efficientnet-b0",
       "bert-like", "digits-cnn", "mnist-resnet", "minilm"]
# num_heads / hidden_size for onnxruntime.transformers.optimizer (model_type "bert").
ORT_TRANSFORMER_OPT = {"bert-like": (12, 384), "minilm": (12, 384)}
MS = "com.microsoft"


@dataclasses.dataclass
class Row:
    """One model's medians (ms) and what each variant fused."""

    model: str
    input_ms: float
    control_ms: float
    fused_ms: float
    ort_opt_ms: float | None
    max_rel_error: float
    edgec_fusions: str
    ort_fusions: str


def feeds_for(model: onnx.ModelProto, n: int = 1) -> list[dict[str, np.ndarray]]:
    """Seeded feeds (token ids, all-ones masks, N(0,1) floats): the CLI's ``--calib random``."""
    return load_calibration("random", model, n=n).feeds


def contrib_summary(model: onnx.ModelProto) -> str:
    """``Attention×6, SkipLayerNormalization×13`` for the com.microsoft ops in a model."""
    ops = collections.Counter(n.op_type for n in model.graph.node if n.domain == MS)
    return ", ".join(f"{op}×{k}" for op, k in sorted(ops.items())) or "–"


def edgec_fuse(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, float, dict[str, int]]:
    """edgec's fuse pass through the verified pipeline; returns the model, its error and its counts."""
    ctx = BuildContext(get_target("cpu-x86"), feeds_for(proto, 2))
    result = run_pipeline(proto, [create_pass("fuse", ctx)], ctx)
    record = result.records[0]
    return result.model, record.max_rel_error, record.stats


def ort_transformers_optimize(path: str, num_heads: int, hidden: int, out: pathlib.Path) -> onnx.ModelProto:
    """ORT's own offline optimizer for BERT graphs (onnxruntime.transformers.optimizer)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(path, model_type="bert", num_heads=num_heads, hidden_size=hidden)
    optimized.save_model_to_file(str(out))
    return onnx.load(str(out))


def bench_model(name: str, rounds: int, runs: int, scratch: pathlib.Path) -> Row:
    """Time the input, the fused model and (for BERT-likes) ORT's optimizer output, interleaved."""
    from edgec.models.zoo import get_zoo_model

    path = str(get_zoo_model(name).onnx_path())
    proto = onnx.load(path)
    fused, rel_err, stats = edgec_fuse(proto)
    # The input twice, in two sessions: the A/A ratio is the noise floor the other ratios sit on.
    variants = [proto.SerializeToString(), proto.SerializeToString(), fused.SerializeToString()]
    ort_summary = ""
    if name in ORT_TRANSFORMER_OPT:
        heads, hidden = ORT_TRANSFORMER_OPT[name]
        ort_model = ort_transformers_optimize(path, heads, hidden, scratch / f"{name}.ortopt.onnx")
        variants.append(ort_model.SerializeToString())
        ort_summary = contrib_summary(ort_model)
    medians = interleaved_medians(variants, feeds_for(proto)[0], rounds=rounds, runs=runs, warmup=5)
    counts = {k: v for k, v in stats.items() if k != "nodes_removed"}
    fusions = ", ".join(f"{k}={v}" for k, v in counts.items()) or "–"
    return Row(name, medians[0], medians[1], medians[2], medians[3] if len(medians) > 3 else None, rel_err,
               fusions, ort_summary)


def render(rows: list[Row], command: str) -> str:
    """The ``## Fusion`` section: a table, the criteria verdicts and the command."""
    lines = [
        "## Fusion", "",
        "Input model vs edgec's `fuse` pass (cpu-x86 target) and, for BERT-likes, ORT's transformers",
        "optimizer (`optimize_model(model_type='bert')`). ORT CPU EP, ORT_ENABLE_ALL, 1 intra-op and",
        "1 inter-op thread, batch 1; median of rounds×runs calls, variants interleaved round-robin.",
        "The machine is shared and noisy: read the ratios, not the milliseconds.", "",
        "The A/A column times the input model in a second session: its distance from 1.000 is the noise.", "",
        "| model | input ms | A/A | fused ms | fused/input | ORT-opt ms | ORT-opt/input | fused/ORT-opt "
        "| max rel err | edgec fusions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ort_ms = f"{r.ort_opt_ms:.2f}" if r.ort_opt_ms else "–"
        ort_ratio = f"{r.ort_opt_ms / r.input_ms:.3f}" if r.ort_opt_ms else "–"
        vs_ort = f"**{r.fused_ms / r.ort_opt_ms:.3f}**" if r.ort_opt_ms else "–"
        lines.append(f"| {r.model} | {r.input_ms:.2f} | {r.control_ms / r.input_ms:.3f} | {r.fused_ms:.2f} | "
                     f"{r.fused_ms / r.input_ms:.3f} | "
                     f"{ort_ms} | {ort_ratio} | {vs_ort} | {r.max_rel_error:.1e} | {r.edgec_fusions} |")
    lines.append("")
    for r in rows:
        if r.ort_fusions:
            lines.append(f"- ORT transformers optimizer on {r.model} fused: {r.ort_fusions}.")
    lines += ["", "Produced by:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse options, bench each model, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="log the table only")
    args = parser.parse_args(argv)
    # Only this script's own lines at INFO: onnxscript logs every folding decision.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as scratch:
        for name in args.models.split(","):
            log.info("benchmarking %s", name)
            rows.append(bench_model(name, args.rounds, args.runs, pathlib.Path(scratch)))
    command = ".venv/bin/python bench/fusion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = render(rows, command.strip())
    log.info("%s", section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
