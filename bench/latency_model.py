"""Bench: the search's latency predictor against measured latency of held-out configurations on this host.

A device file is swept on this host (edgec.runtime.devices.export_device_file) from the unpruned zoo
models and from Convs at scaled channel widths. For each model family the predictor is first used as
the device file alone gives it (no calibration: every configuration is held out), then calibrated on
unpruned models only, in two ways: the fp32 model alone (then the int8 model is held out too), and
the fp32 and int8 models (one scale per precision). Calibration is ``LatencyModel.calibrate`` on
(model, measured ms) pairs, the call the search's ``CalibratedLatency`` makes with its host timings.
It then predicts held-out configurations it never saw: channel-pruned variants at ratios 0.1..0.6 in
both modes, the int8 model (first way) and pruned int8 models. All variants of a family are timed in
one interleaved run (edgec.compiler.search.measure.measure_latencies, 1 intra-op thread,
ORT_ENABLE_ALL). Writes the ``## Latency model`` section of bench/RESULTS.md and
bench/plots/latency_model.png (``--no-write``: only logs the figures, for a reduced run).

    .venv/bin/python bench/latency_model.py [--models resnet18,mobilenetv2,efficientnet-b0,bert-like]
        [--sweep-models NAME,...] [--work /tmp/edgec-latency-bench] [--no-write]

``--work`` keeps the device file, the variants and the measurements; a second run reuses them
(``--remeasure`` forces new timings). A reduced run (a few minutes on 2 cores):
``--models resnet18,mobilenetv2 --sweep-models resnet18,mobilenetv2 --work /tmp/edgec-latency-small --no-write``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import pathlib
import sys

import onnx
from _results import write_section  # noqa: E402  (bench/ is on sys.path when run)

from edgec.compiler.pipeline import run_pipeline
from edgec.compiler.search.latency_model import LatencyModel, scaled_conv_model
from edgec.compiler.search.measure import measure_latencies
from edgec.compiler.sweep_models import load_sweep_models
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.devices import export_device_file
from edgec.runtime.devices.sweep import load_device_file
from edgec.targets.registry import get_target

log = logging.getLogger("bench.latency_model")
PLOT = pathlib.Path(__file__).with_name("plots") / "latency_model.png"
SECTION = "## Latency model"
MODELS = ("resnet18", "mobilenetv2", "efficientnet-b0", "bert-like")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
INT8_PRUNED = (0.3, 0.5)
TRANSFORMERS = ("bert-like", "minilm")
# The sweep: the held-out families' unpruned models and other zoo families, plus Convs at scaled widths.
SWEEP_MODELS = (*MODELS, "resnet50", "mobilenetv3-large", "densenet121", "mnist-resnet", "minilm")
SCALED_FROM = ("resnet18", "mobilenetv2", "efficientnet-b0", "resnet50", "mobilenetv3-large")
SCALE_FACTORS = (0.45, 0.7)
# Which variants calibrate a family: none (the device file alone), fp32 alone, fp32 and int8 (one scale per
# precision), or as a search calibrates, on the original and candidates it measured: fp32, int8 and one pruned
# fp32 and one pruned int8 model (the table shows the middle ratio; the summary every choice of the two).
SEARCH_LIKE = "search-like calibration"
CALIBRATIONS = {"no calibration": (), "fp32 calibration": ("fp32",), "fp32 + int8 calibration": ("fp32", "int8"),
                SEARCH_LIKE: ("fp32", "int8", "prune uncon 0.3", "prune uncon 0.3 + int8")}


def _build(name: str, passes: list[tuple[str, dict]]) -> bytes:
    zoo = get_zoo_model(name)
    proto = onnx.load(str(zoo.onnx_path()))
    if not passes:
        return proto.SerializeToString()
    ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(8))
    if name in TRANSFORMERS:  # pruning first, then ORT's transformer fusions before int8 (bench/quantization.py)
        quantized = any(p == "quantize-int8" for p, _ in passes)
        passes = [p for p in passes if p[0] != "quantize-int8"]
        passes += [("fuse", {}), ("quantize-int8", {})] if quantized else []
    result = run_pipeline(proto, [create_pass(p, ctx, o) for p, o in passes], ctx)
    return result.model.SerializeToString()


def variant_specs() -> list[tuple[str, list[tuple[str, dict]]]]:
    """(label, passes) of every configuration; the first one is the calibration model."""
    specs: list[tuple[str, list[tuple[str, dict]]]] = [("fp32", [])]
    for mode in ("constrained", "unconstrained"):
        specs += [(f"prune {mode[:5]} {r}", [("prune-channels", {"ratio": r, "mode": mode})]) for r in RATIOS]
    specs.append(("int8", [("quantize-int8", {})]))
    specs += [(f"prune uncon {r} + int8", [("prune-channels", {"ratio": r, "mode": "unconstrained"}),
                                            ("quantize-int8", {})]) for r in INT8_PRUNED]
    return specs


def family(name: str, work: pathlib.Path, remeasure: bool) -> dict:
    """Variants of one model (built once, kept under ``work``) and their interleaved measurements."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "measured.json"
    if record.exists() and not remeasure:
        return json.loads(record.read_text())
    labels, paths = [], []
    for i, (label, passes) in enumerate(variant_specs()):
        path = folder / f"v{i:02d}.onnx"
        if not path.exists():
            try:
                path.write_bytes(_build(name, passes))
            except Exception as exc:  # a configuration a pass refuses is reported, not fatal
                log.warning("%s %s: not built (%s: %s)", name, label, type(exc).__name__, exc)
                continue
        labels.append(label)
        paths.append(path)
    feeds = get_zoo_model(name).calibration(1)[0]
    ms = measure_latencies([str(p) for p in paths], feeds, min_rounds=15, max_rounds=40)
    doc = {"model": name, "variants": [{"label": lab, "path": str(p), "median_ms": m.median_ms,
                                        "stable": m.stable, "rounds": m.rounds}
                                       for lab, p, m in zip(labels, paths, ms, strict=True)]}
    record.write_text(json.dumps(doc, indent=1))
    return doc


@functools.cache
def _kernel_sums(model: LatencyModel, path: str) -> dict[str, float]:
    """A variant's tabled kernel ms per precision: priced once, then calibrated under every mode and choice."""
    return model._by_precision(onnx.load(path))


def predict_family(model: LatencyModel, doc: dict, calibration: tuple[str, ...] = ("fp32",)) -> list[dict]:
    """Calibrate on the family's ``calibration`` variants (unpruned; none: uncalibrated), then predict the rest."""
    variants = doc["variants"]
    sums = [_kernel_sums(model, v["path"]) for v in variants]
    model.calibrate_sums([(s, v["median_ms"]) for v, s in zip(variants, sums, strict=True)
                          if v["label"] in calibration])
    rows = []
    for v, kernels in zip(variants, sums, strict=True):
        predicted = model.total_ms(kernels)
        rows.append({"model": doc["model"], "label": v["label"], "measured": v["median_ms"],
                     "predicted": predicted, "error": predicted / v["median_ms"] - 1.0,
                     "held_out": v["label"] not in calibration, "stable": v["stable"]})
    return rows


def search_like_choices(docs: list[dict]) -> list[tuple[str, ...]]:
    """Every search-like calibration set: fp32, int8, one pruned fp32 and one pruned int8 variant."""
    labels = [v["label"] for v in docs[0]["variants"]]
    pruned = [lab for lab in labels if lab.startswith("prune") and "int8" not in lab]
    pruned_int8 = [lab for lab in labels if lab.startswith("prune") and "int8" in lab]
    return [("fp32", "int8", a, b) for a in pruned for b in pruned_int8]


def within_share(model: LatencyModel, docs: list[dict], calibration: tuple[str, ...]) -> float:
    """Share of held-out configurations within ±10% under one calibration set."""
    held = [r for doc in docs for r in predict_family(model, doc, calibration) if r["held_out"]]
    return sum(abs(r["error"]) <= 0.10 for r in held) / len(held)


def _panel(ax, rows: list[dict], title: str) -> None:
    for name in dict.fromkeys(r["model"] for r in rows):
        held = [r for r in rows if r["model"] == name and r["held_out"]]
        ax.scatter([r["measured"] for r in held], [r["predicted"] for r in held], label=name, s=22)
    calib = [r for r in rows if not r["held_out"]]
    ax.scatter([r["measured"] for r in calib], [r["predicted"] for r in calib], marker="x", color="k", s=30,
               label="calibration")
    lo = min(min(r["measured"], r["predicted"]) for r in rows) * 0.8
    hi = max(max(r["measured"], r["predicted"]) for r in rows) * 1.2
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for f in (0.9, 1.1):
        ax.plot([lo, hi], [lo * f, hi * f], "k--", lw=0.6)
    held = [r for r in rows if r["held_out"]]
    share = sum(abs(r["error"]) <= 0.10 for r in held) / len(held)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured median (ms)",
           ylabel="predicted (ms)", title=f"{title}: {share:.0%} within ±10%")
    ax.legend(fontsize=7)


def _plot(modes: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 5.6), squeeze=False)
    for ax, (mode, rows) in zip(axes[0], modes.items(), strict=True):
        _panel(ax, rows, mode)
    fig.suptitle("Latency predictor vs measured, held-out configurations (cpu-x86, 1 thread; dashed: ±10%)")
    PLOT.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)


def _section(modes: dict[str, list[dict]], search_like: list[float], command: str) -> str:
    lines = [SECTION, "", f"Command: `{command}`", "",
             "Device file swept on this host from the unpruned zoo models (resnet18, mobilenetv2, efficientnet-b0, "
             "bert-like, resnet50, mobilenetv3-large, densenet121, mnist-resnet, minilm) plus Convs at 0.45x and "
             "0.7x channel widths. Each family is calibrated (LatencyModel.calibrate, as the search calibrates "
             "on its host timings) on the variants each mode names, and every other configuration is held out; "
             "with no calibration the device file alone predicts, and every configuration counts as held out. "
             "All variants of a family are measured in one interleaved run "
             "(measure_latencies, >= 15 rounds) on a machine that other jobs share at times (see the last notes). "
             f"The {SEARCH_LIKE} is what a search has after it has timed a few candidates: it also calibrates on "
             "one pruned fp32 and one pruned int8 variant per family, and holds out the other 12.", ""]
    for mode, rows in modes.items():
        held = [r for r in rows if r["held_out"]]
        within = sum(abs(r["error"]) <= 0.10 for r in held)
        median = sorted(abs(r["error"]) for r in held)[len(held) // 2]
        lines.append(f"- **{mode}**: {within}/{len(held)} held-out configurations ({within / len(held):.0%}) "
                     f"within ±10% of measured; median |error| {median:.1%}.")
    mean = sum(search_like) / len(search_like)
    lines.append(f"- **{SEARCH_LIKE}, every choice** of the pruned fp32 variant (12) and the pruned int8 variant "
                 f"(2), the same choice in every family: within ±10% on average {mean:.1%} "
                 f"of the held-out configurations, from {min(search_like):.1%} to {max(search_like):.1%}; "
                 f"{sum(x >= 0.95 for x in search_like)} of the {len(search_like)} choices reach 95%.")
    for mode, rows in modes.items():
        misses = [f"{r['model']} {r['label']} ({r['error']:+.0%})" for r in rows
                  if r["held_out"] and abs(r["error"]) > 0.10]
        lines.append(f"- outside ±10% with {mode}: {', '.join(misses) or 'none'}.")
    lines.append("- Without an int8 measurement the int8 kernel tables' error is not corrected: ORT's int8 "
                 "micro-kernels run faster alone than inside a network (resnet18, efficientnet-b0 under-predicted) "
                 "and bert-like's int8 graph is dynamic int8 with contrib ops priced by their fp32 equivalents "
                 "(over-predicted). One measured int8 model per family fixes both. Repeated runs on the shared "
                 "machine move the shares by a few configurations (on 2026-12-03, the previous run's variants "
                 "timed again against its device file, swept hours earlier, `--work /tmp/lat-now --remeasure`: "
                 "53/60, 54/56 and 47/48, every "
                 "search-like choice 98.3% on average, 95.8% at worst; before the size exponent, runs gave "
                 "50/60 and 49-50/56).")
    lines.append("- Why the calibrated scale is a power of the model's size: inside a network a kernel runs at a "
                 "multiple of its standalone price, and that multiple moves with the network's size. ORT's profiler "
                 "on efficientnet-b0 (1 thread): Conv at 1.62x its price in the fp32 network, 1.50-1.56x pruned "
                 "by 0.3-0.6; its SiLUs (QuickGelu) 1.32x, then 1.17x; Mul 1.99x, then 1.64-1.73x. resnet18's "
                 "int8 kernels move the other way. A single scale per precision, fitted on the unpruned models, "
                 "over-predicts efficientnet-b0 pruned by 0.4-0.6 (+11% to +19%) and under-predicts resnet18 "
                 "pruned by 0.5 + int8 (-23% to -28%) in every run. Once the measured models span 1.25x in "
                 "size, calibrate fits measured/tabled = a * size^c per precision (c clipped to ±0.33); with one "
                 "measured model per precision, as in the first three modes, c is 0.")
    lines.append("- 'no calibration' is the device file alone: its standalone micro-benchmarks price kernels "
                 "below their time inside a network (the multiples above), and a sweep made at another time also "
                 "carries the shared host's load and clock of that time (earlier runs: 25/64 and 1/64). That is "
                 "why the search never prices a host target uncalibrated: it times the original first.")
    names = list(modes)
    lines += ["", "| model | configuration | measured ms | " + " | ".join(f"{m}: predicted (error)" for m in names)
              + " |", "|---|---|---:|" + "---:|" * len(names)]
    for parts in zip(*modes.values(), strict=True):
        cells = [f"{r['predicted']:.2f} ({r['error']:+.1%})" if r["held_out"] else "calibration" for r in parts]
        lines.append(f"| {parts[0]['model']} | {parts[0]['label']} | {parts[0]['measured']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "![predicted vs measured](plots/latency_model.png)", ""]
    return "\n".join(lines)


def device_file(work: pathlib.Path, sweep: tuple[str, ...] = SWEEP_MODELS) -> pathlib.Path:
    """The host's device file: the zoo's op shapes plus Convs at scaled channel counts (other families' too)."""
    path = work / "host.json"
    if path.exists():
        return path
    extra = []
    for name in (n for n in SCALED_FROM if n in sweep):
        for factor in SCALE_FACTORS:
            out = work / f"scaled_{name}_{factor}.onnx"
            onnx.save(scaled_conv_model(onnx.load(str(get_zoo_model(name).onnx_path())), factor), out)
            extra.append(str(out))
    export_device_file("local", path, target="cpu-x86", models=load_sweep_models([*sweep, *extra]),
                       max_per_op=400, runs=20,
                       warmup=3)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work", default="/tmp/edgec-latency-bench")
    parser.add_argument("--sweep-models", default=",".join(SWEEP_MODELS),
                        help="zoo models whose op shapes the device file sweeps (and scales, where listed)")
    parser.add_argument("--remeasure", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="log the figures; leave RESULTS.md and the plot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    predictor = LatencyModel(load_device_file(device_file(work, tuple(args.sweep_models.split(",")))))
    docs = [family(name, work, args.remeasure) for name in args.models.split(",")]
    modes = {mode: [row for doc in docs for row in predict_family(predictor, doc, calibration)]
             for mode, calibration in CALIBRATIONS.items()}
    search_like = [within_share(predictor, docs, choice) for choice in search_like_choices(docs)]
    log.info("%s, every choice: mean %.1f%%, min %.1f%%, max %.1f%% within 10%%", SEARCH_LIKE,
             100 * sum(search_like) / len(search_like), 100 * min(search_like), 100 * max(search_like))
    for mode, rows in modes.items():
        held = [r for r in rows if r["held_out"]]
        errors = sorted(abs(r["error"]) for r in held)
        log.info("%s: %d/%d within 10%%, median |error| %.1f%%", mode, sum(e <= 0.10 for e in errors), len(held),
                 100 * errors[len(errors) // 2])
    if args.no_write:
        for parts in zip(*modes.values(), strict=True):
            log.info("%s %s: measured %.2f ms; %s", parts[0]["model"], parts[0]["label"], parts[0]["measured"],
                     "; ".join(f"{m} {r['predicted']:.2f} ({r['error']:+.1%})" for m, r in zip(modes, parts,
                                                                                                 strict=True)))
        return
    _plot(modes)
    command = "PYTHONHASHSEED=0 .venv/bin/python bench/latency_model.py " + " ".join(argv or sys.argv[1:])
    write_section(_section(modes, search_like, command.strip()))


if __name__ == "__main__":
    main()
