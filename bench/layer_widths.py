"""Bench: per-layer widths (the search's EvoPress-style phase) against the uniform ratio at matched latency.

For each model and uniform ratio r (three per model, so three latency targets): the uniform model at r is
the base the search's per-layer phase starts from. The phase's own parts run as in a search
(``compiler.search.layers``): the per-layer cost model is fitted to uniform models at 0.0-0.6 timed on this
host against the original, the evolution proposes offspring that cost no more than the base by that model,
builds them on the fit part of the calibration data and selects on the held-out score. At the end the
base and the best per-layer model are timed against the original in one interleaved run: *matched* when
the per-layer model's measured latency is within the noise band (2%) of the base's or below.

Held-out metric: the zoo's own for trained models (mnist-resnet: accuracy on 1000 held-out digits;
minilm: mean cosine to the reference embeddings of held-out sentences), the output-agreement proxy on the
held-out calibration samples for the random-init yolo-det (per-slice Pearson: box and class channels).
A per-layer result *beats* the uniform one when its held-out metric is higher by more than the noise band
(1e-3); *ties* within it.

    .venv/bin/python bench/layer_widths.py [--models mnist-resnet,minilm,yolo-det] [--evaluations 24]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pathlib
import random
import time

import onnx
from _results import write_section

from edgec.compiler.calibration import split_calibration
from edgec.compiler.search.evaluate import CandidateTask, build_and_score, make_scorer
from edgec.compiler.search.executor import make_executor
from edgec.compiler.search.layers import (
    LayerEvolution,
    LayerPhase,
    fit_cost,
    layer_summary,
    offspring_evaluations,
    plot_layers,
)
from edgec.compiler.search.measure import measure_latencies
from edgec.compiler.search.objective import Evaluation
from edgec.compiler.search.space import build_space
from edgec.models.zoo import get_zoo_model
from edgec.passes.pruning import PruneChannelsPass
from edgec.targets.registry import get_target

log = logging.getLogger("bench.layer_widths")
HERE = pathlib.Path(__file__).parent
SECTION = "## Per-layer widths vs uniform ratio"
# Three uniform ratios per model that build three different models (mnist-resnet's 32- and 64-channel layers at
# the target's multiple of 16 step only at 0.1, 0.2, 0.5 and 0.7; at 0.7 every layer is at its narrowest).
RATIOS = {"mnist-resnet": (0.1, 0.2, 0.5), "minilm": (0.2, 0.35, 0.5), "yolo-det": (0.2, 0.35, 0.5)}
FIT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
OPTIONS = {"mode": "constrained", "rounding": "dithered", "recovery": "lstsq", "importance": "activation",
           "allocation": "budgeted", "heads": 0.0}
CALIB = {"minilm": 32, "mnist-resnet": 32, "yolo-det": 16}
NOISE = 1e-3
LATENCY_BAND = 1.02
TARGET = get_target("cpu-x86")


def _candidate(space, ratio: float, groups: tuple = ()) -> dict:
    c = {**space.default(), **{f"prune-channels.{k}": v for k, v in OPTIONS.items()}, "prune-channels.ratio": ratio}
    if groups:
        c["prune-channels.groups"] = groups
    return c


def _ratios(original: bytes, models: list[bytes], feeds) -> list[float]:
    """Each model's latency over the original's, each timed in a pair with it (as the search times)."""
    out = []
    for model in models:
        base, timed = measure_latencies([original, model], feeds, min_rounds=8)
        out.append(timed.median_ms / base.median_ms)
    return out


def run_model(name: str, evaluations: int, executor) -> list[dict]:
    zoo = get_zoo_model(name)
    proto = onnx.load(str(zoo.onnx_path()))
    original = proto.SerializeToString()
    split = split_calibration(zoo.calibration(CALIB[name]))
    scorer = make_scorer(original, split.held_out, None, name if zoo.trained else None)
    space = build_space(("prune-channels",), proto, TARGET)
    knob, uniform = space.layer_knobs[0], space.knob("prune-channels.ratio")

    def build(candidates: list[dict]):
        tasks = [CandidateTask(i, original, *space.pipeline(c), TARGET.name, tuple(split.fit), 0, scorer)
                 for i, c in enumerate(candidates)]
        return executor.map(build_and_score, tasks)

    started = time.perf_counter()
    baseline_accuracy = scorer.score(original)
    fit_candidates = [_candidate(space, r) for r in sorted(set(FIT_RATIOS) | set(RATIOS[name]))]
    outcomes = build(fit_candidates)
    ratios = _ratios(original, [o.model for o in outcomes], split.fit[0])
    uniform_evals = [Evaluation(c, r, o.accuracy, baseline_accuracy - o.accuracy, o.build_s, o.error,
                                hashlib.sha256(o.model).hexdigest())
                     for c, o, r in zip(fit_candidates, outcomes, ratios, strict=True)]
    models = {e.model_digest: o.model for e, o in zip(uniform_evals, outcomes, strict=True)}
    rows = []
    for ratio in RATIOS[name]:
        base = next(e for e in uniform_evals if e.candidate["prune-channels.ratio"] == ratio)
        values = tuple(sorted({float(c) for c in knob.choices} | {float(r) for r in FIT_RATIOS}
                              | set(RATIOS[name])))
        levels = PruneChannelsPass.layer_levels(proto, TARGET, split.fit[0], "groups", values, OPTIONS)
        phase = LayerPhase(knob, uniform, levels, base)
        cost = fit_cost(phase, uniform_evals, original, split.fit[0])
        evolution = LayerEvolution(phase, cost, random.Random(0))
        best, best_model, tried = base, models[base.model_digest], 0
        while tried < evaluations:
            choices = evolution.propose(min(4, evaluations - tried))
            if not choices:
                break
            built = build([phase.candidate(c) for c in choices])
            results = offspring_evaluations(phase, cost, choices, built, baseline_accuracy)
            evolution.select([(c, r.accuracy) for c, r in zip(choices, results, strict=True)])
            for result, outcome in zip(results, built, strict=True):
                if result.ok and result.score > best.score:
                    best, best_model = result, outcome.model
            tried += len(choices)
            log.info("%s r=%.2f: %d tried, best %.4f (uniform %.4f)", name, ratio, tried, best.score, base.score)
        # The two side by side with the original, in the same interleaved rounds.
        timed = measure_latencies([original, models[base.model_digest], best_model], split.fit[0], min_rounds=20)
        uniform_ms, layered_ms = (t.median_ms / timed[0].median_ms for t in timed[1:])
        rows.append({"model": name, "ratio": ratio, "uniform_latency": uniform_ms, "layered_latency": layered_ms,
                     "uniform_metric": base.score, "layered_metric": best.score, "evaluated": tried,
                     "predicted_over_base": cost.predict(phase.choice_of(best.candidate))
                     / cost.predict(phase.choice_of(base.candidate)),
                     "layers": layer_summary(phase, best.candidate), "metric": scorer.label})
    log.info("%s done in %.0f s", name, time.perf_counter() - started)
    return rows


def verdict(row: dict) -> str:
    matched = row["layered_latency"] <= row["uniform_latency"] * LATENCY_BAND
    if not matched:
        return "slower"
    gain = row["layered_metric"] - row["uniform_metric"]
    return "beats" if gain > NOISE else "ties" if gain >= -NOISE else "worse"


def table(rows: list[dict], command: str) -> str:
    lines = [SECTION, "", f"Command: `{command}`", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| model | uniform ratio | latency, uniform (x fp32) | latency, per-layer (x fp32) | held-out metric, "
             "uniform | held-out metric, per-layer | per-layer candidates | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ratio']:.2f} | {r['uniform_latency']:.3f} | {r['layered_latency']:.3f} | "
                     f"{r['uniform_metric']:.4f} | {r['layered_metric']:.4f} | {r['evaluated']} | {verdict(r)} |")
    wins = sum(verdict(r) == "beats" for r in rows)
    ties = sum(verdict(r) == "ties" for r in rows)
    lines += ["", f"Per-layer beats uniform in {wins} of {len(rows)} cases, ties in {ties}.",
              "Metrics: " + "; ".join(sorted({f"{r['model']}: {r['metric']}" for r in rows})), "",
              "![per-layer widths](plots/layer_widths.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(RATIOS))
    parser.add_argument("--evaluations", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("edgec", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    executor = make_executor(None, args.workers)
    try:
        rows = [row for name in args.models.split(",") for row in run_model(name, args.evaluations, executor)]
    finally:
        executor.close()
    command = f".venv/bin/python bench/layer_widths.py --models {args.models} --evaluations {args.evaluations}"
    text = table(rows, command)
    log.info("\n%s", text)
    best = max(rows, key=lambda r: r["layered_metric"] - r["uniform_metric"])
    plot_layers(HERE / "plots" / "layer_widths.png", best["layers"],
                f"{best['model']} at uniform ratio {best['ratio']}: per-layer widths chosen")
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
