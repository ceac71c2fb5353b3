"""Quantization bench: every zoo model x precision, edgec's passes vs ORT's own tools at default settings.

Size, latency ratio to fp32 (1 thread, variants interleaved round-robin, medians) and cosine to fp32
on held-out feeds; task metric for trained models. Writes (or replaces) the ``## Quantization``
section of bench/RESULTS.md and bench/plots/quantization.png.

    .venv/bin/python bench/quantization.py [--models a,b] [--rounds 6] [--runs 3] [--no-write] [--merge]

``--merge`` re-measures only ``--models`` and keeps the other models' rows and notes from RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import re
import sys
import tempfile

import numpy as np
import onnx
from _results import RESULTS, write_section  # noqa: E402  (bench/ is on sys.path when run)
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

from edgec.compiler.pipeline import run_pipeline
from edgec.models.zoo import ZOO_NAMES, get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.session import compare_outputs, make_session, run
from edgec.runtime.timing import interleaved_medians
from edgec.targets.registry import get_target

log = logging.getLogger("bench.quantization")
PLOT = pathlib.Path(__file__).with_name("plots") / "quantization.png"
TRANSFORMERS = ("bert-like", "minilm")
# edgec variants: (label, target, passes with options). Latency is measured for the CPU-runnable ones.
EDGEC = {
    "edgec int8": ("cpu-x86", [("quantize-int8", {})]),
    "edgec int4": ("cpu-x86", [("quantize-int4", {})]),
    "edgec fp16": ("cuda", [("fp16", {})]),
    "edgec fp8 (emulated)": ("cuda", [("fp8", {})]),
    "edgec fp4 (simulated)": ("cpu-x86", [("fp4", {})]),
}
TIMED = ("fp32 (A/A copy)", "edgec int8", "ORT static", "ORT dynamic", "edgec int4", "edgec fp16")
PLACEMENTS: dict[str, str] = {}  # model -> what quantize-int8 chose, for the notes under the table


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list) -> None:
        self._it = iter(feeds)

    def get_next(self):  # noqa: ANN201 - ORT's interface
        return next(self._it, None)


def _edgec(proto: onnx.ModelProto, zoo, target: str, passes: list) -> onnx.ModelProto:
    ctx = BuildContext(get_target(target), zoo.calibration(16), evaluate=zoo.evaluate if zoo.trained else None)
    if zoo.name in TRANSFORMERS:
        passes = [("fuse", {}), *passes]
    result = run_pipeline(proto, [create_pass(n, ctx, o) for n, o in passes], ctx)
    stats = result.records[-1].stats
    if result.records[-1].name == "quantize-int8":
        PLACEMENTS[zoo.name] = (f"dynamic, {stats.get('attention_unpacked', 0)} fused Attention unpacked"
                                if stats.get("method") == "dynamic" else
                                f"{stats.get('placement', 'all')} (race: {stats.get('placement_latency_ratio')})")
    return result.model


def _ort(src: pathlib.Path, zoo, scratch: pathlib.Path) -> dict[str, onnx.ModelProto]:
    out = {}
    static = scratch / f"{zoo.name}-ort-static.onnx"
    quantize_static(str(src), str(static), _Reader(zoo.calibration(16)))
    out["ORT static"] = onnx.load(str(static))
    dynamic = scratch / f"{zoo.name}-ort-dynamic.onnx"
    quantize_dynamic(str(src), str(dynamic))
    out["ORT dynamic"] = onnx.load(str(dynamic))
    return out


def _variants(zoo, scratch: pathlib.Path) -> dict[str, onnx.ModelProto]:
    src = zoo.onnx_path()
    proto = onnx.load(str(src))
    variants = {"fp32": proto, "fp32 (A/A copy)": proto, **_ort(src, zoo, scratch)}
    for label, (target, passes) in EDGEC.items():
        if label == "edgec int4" and zoo.name not in TRANSFORMERS:
            continue
        try:
            variants[label] = _edgec(proto, zoo, target, passes)
        except Exception as exc:  # a bench row, not a crash: record why the variant is missing
            log.warning("%s %s failed: %s", zoo.name, label, exc)
    return variants


def bench_model(name: str, rounds: int, runs: int, scratch: pathlib.Path) -> list[dict]:
    """One row per variant: MB, latency ratio, cosine, task metric."""
    zoo = get_zoo_model(name)
    variants = _variants(zoo, scratch)
    feeds = zoo.calibration(4, "eval")
    ref = [run(make_session(variants["fp32"].SerializeToString()), f) for f in feeds]
    timed = [k for k in variants if k == "fp32" or k in TIMED]
    times = interleaved_medians([variants[k].SerializeToString() for k in timed], feeds[0], rounds=rounds, runs=runs)
    rows = []
    for label, model in variants.items():
        data = model.SerializeToString()
        got = [run(make_session(data), f) for f in feeds]
        metric = zoo.evaluate(data) if zoo.trained else None
        ms = times[timed.index(label)] if label in timed else None
        rows.append({"model": name, "variant": label, "mb": len(data) / 1e6, "ms": ms,
                     "ratio": ms / times[0] if ms else None, "cosine": compare_outputs(ref, got)[0].cosine,
                     "metric": next(iter(metric.items())) if metric else None})
    return rows


def render(rows: list[dict], command: str) -> str:
    """The ``## Quantization`` section."""
    lines = ["## Quantization", "",
             "1 thread, batch 1, ORT CPU EP at ORT_ENABLE_ALL; variants of one model timed interleaved "
             "round-robin, medians. Cosine: to fp32 on 4 held-out feeds. ORT static/dynamic: "
             "`quantize_static(model, out, reader)` / `quantize_dynamic(model, out)` with default settings. "
             "edgec int8 = `quantize-int8` (transformers: `fuse,quantize-int8`, which picks dynamic per-channel "
             "and unpacks fused Attention so its QKV weights are int8 too). "
             "fp16/fp8 are built for the cuda target; fp8 runs emulated here and fp4 is simulated "
             "(weights on the E2M1 grid, stored fp32), so their latencies are not shown. "
             "`fp32 (A/A copy)` is the same fp32 model timed again: its distance from 1.00x is the noise floor "
             "of that model's ratios on this shared host.", "",
             "| model | variant | MB | ms | ratio to fp32 | cosine | task metric |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = f"{r['ms']:.2f}" if r["ms"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        metric = f"{r['metric'][0]} {r['metric'][1]:.4f}" if r["metric"] else "-"
        lines.append(f"| {r['model']} | {r['variant']} | {r['mb']:.1f} | {ms} | {ratio} "
                     f"| {r['cosine']:.5f} | {metric} |")
    lines += ["", "What `quantize-int8` chose per model (placement race: latency ratio to fp32 of each candidate, "
              "lower quartile, timed inside the pass):", ""]
    lines += [f"- {model}: {choice}" for model, choice in PLACEMENTS.items()]
    lines += ["", "Produced by:", "", "```", command, "```", ""]
    return "\n".join(lines)


def _parse_row(line: str) -> dict:
    model, variant, mb, ms, ratio, cosine, metric = (c.strip() for c in line.strip().strip("|").split("|"))
    name, _, value = metric.rpartition(" ")
    return {"model": model, "variant": variant, "mb": float(mb), "ms": None if ms == "-" else float(ms),
            "ratio": None if ratio == "-" else float(ratio.rstrip("x")), "cosine": float(cosine),
            "metric": None if metric == "-" else (name, float(value))}


def previous(path: pathlib.Path = RESULTS) -> tuple[list[dict], dict[str, str], list[str]]:
    """The rows, placement notes and "Produced by" commands of the section now in RESULTS.md."""
    text = path.read_text() if path.exists() else ""
    found = re.search(r"^## Quantization\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not found:
        return [], {}, []
    body = found.group(1)
    rows = [_parse_row(line) for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| model") and not line.startswith("|---")]
    notes = dict(re.findall(r"^- ([\w.-]+): (.*)$", body, re.M))
    commands = re.findall(r"^(\.venv/bin/python bench/quantization\.py.*)$", body, re.M)
    return rows, notes, commands


def merged(new_rows: list[dict], new_notes: dict[str, str], command: str) -> tuple[list[dict], str]:
    """Fresh rows replace the old rows of their models, in the old order; the commands list both runs."""
    old_rows, old_notes, old_commands = previous()
    fresh = {r["model"] for r in new_rows}
    order = list(dict.fromkeys([*(r["model"] for r in old_rows), *fresh]))
    rows = [r for m in order for r in (new_rows if m in fresh else old_rows) if r["model"] == m]
    notes = {m: new_notes.get(m, old_notes.get(m)) for m in order if m in new_notes or m in old_notes}
    PLACEMENTS.clear()
    PLACEMENTS.update(notes)
    commands = [c for c in old_commands if "--merge" not in c] + [command]
    return rows, "\n".join(commands)


def plot(rows: list[dict], path: pathlib.Path = PLOT) -> None:
    """Grouped bars: int8 latency ratio per model, edgec vs ORT static/dynamic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = ["edgec int8", "ORT static", "ORT dynamic"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, label in enumerate(labels):
        values = [next((r["ratio"] for r in rows if r["model"] == m and r["variant"] == label), np.nan) or np.nan
                  for m in models]
        ax.bar(np.arange(len(models)) + (i - 1) * 0.27, np.minimum(values, 3.0), 0.27, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right")
    ax.set_ylabel("latency / fp32 (1 thread, capped at 3)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Parse options, bench each model, write the section and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO_NAMES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows from RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-qbench-") as scratch:
        for name in args.models.split(","):
            log.info("benchmarking %s", name)
            rows += bench_model(name, args.rounds, args.runs, pathlib.Path(scratch))
    command = (".venv/bin/python bench/quantization.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    if args.merge:
        rows, command = merged(rows, dict(PLACEMENTS), command)
    section = render(rows, command)
    log.info("%s", section)
    if not args.no_write:
        write_section(section)
        plot(rows)


if __name__ == "__main__":
    main()
