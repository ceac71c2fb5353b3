"""What a search leaves behind: a manifest summary, the chosen edgec.toml and the Pareto plot.

The bundle format lists every file it holds (the loader refuses others), so the search's files sit
next to the bundle, named after it: ``OUT.search-choice.toml`` (``edgec build --config`` on it
rebuilds the chosen model exactly) and ``OUT.pareto.png``. The manifest's ``metrics.search`` holds
the summary: objective, budget and evaluations, the Pareto front, and the chosen candidate's
latency as the search estimated it and as measured again on the final bundle model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import onnx

from edgec.compiler.config import BuildConfig
from edgec.compiler.search.measure import measure_latencies
from edgec.compiler.search.orchestrate import PredictedLatency, SearchResult
from edgec.compiler.search.pareto import describe, front_rows, pareto_front, plot_front
from edgec.compiler.search.space import choice_toml, model_reference
from edgec.targets.profile import TargetProfile


def sidecar_paths(output: Path) -> dict[str, Path]:
    """Where the chosen config and the plot go: next to the bundle, named after it."""
    return {"choice": output.with_name(f"{output.name}.search-choice.toml"),
            "plot": output.with_name(f"{output.name}.pareto.png")}


def _measured(original: onnx.ModelProto, final: onnx.ModelProto, target: TargetProfile,
              feeds: dict[str, Any]) -> dict[str, float]:
    base, chosen = measure_latencies([original.SerializeToString(), final.SerializeToString()], feeds,
                                     threads=target.intra_op_num_threads, level=target.graph_optimization_level)
    return {"median_ms": chosen.median_ms, "original_ms": base.median_ms, "ratio": chosen.median_ms / base.median_ms,
            "stable": chosen.stable}


def choice_text(cfg: BuildConfig, search: SearchResult) -> str:
    """The chosen candidate as an edgec.toml that rebuilds it."""
    calibration = {"source": cfg.calib, "samples": cfg.calib_samples, "image": cfg.image_preprocess,
                   "tokenizer": cfg.tokenizer_dir}
    top = {"model": model_reference(cfg.model), "target": cfg.target, "seed": cfg.seed,
           "input-shapes": list(cfg.input_shapes) or None}
    chosen = search.chosen
    header = (f"Chosen by `edgec build` search: {describe(chosen.candidate)}; latency {chosen.latency_ms:.4g} ms "
              f"({search.latency_source}), {search.metric} {chosen.accuracy:.5g}.\n"
              "Rebuild it with: edgec build --config THIS_FILE -o OUT")
    return choice_toml(top, cfg.passes, cfg.pass_options,
                       {"calibration": {k: v for k, v in calibration.items() if v is not None}}, header)


def summarise(cfg: BuildConfig, search: SearchResult, original: onnx.ModelProto, final: onnx.ModelProto,
              target: TargetProfile, feeds: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's ``metrics.search``, and the sidecar contents to write once the bundle exists."""
    chosen = search.chosen
    objective = search.objective
    paths = sidecar_paths(cfg.output)
    measured = _measured(original, final, target, feeds)
    summary = {
        "objective": {"latency_ms": objective.latency_ms, "max_drop": objective.max_drop},
        "strategy": search.strategy, "budget": search.budget, "evaluations": len(search.evaluations),
        "failed": sum(not e.ok for e in search.evaluations), "wall_s": round(search.wall_s, 2),
        "metric": search.metric, "latency_source": search.latency_source,
        "original": {"latency_ms": search.baseline_ms, "accuracy": search.baseline_accuracy},
        "chosen": {"candidate": describe(chosen.candidate), "knobs": chosen.candidate, "passes": list(cfg.passes),
                   "accuracy": chosen.accuracy, "drop": chosen.drop,
                   "latency_ms": {"predicted": chosen.latency_ms, "measured": measured["median_ms"],
                                  "measured_on": "host", "measured_ratio_to_original": measured["ratio"]},
                   "in_window": objective.in_window(chosen) if objective.latency_ms is not None else None},
        "pareto": front_rows(pareto_front(search.evaluations), chosen),
        # Every evaluation in the order the strategy asked for it: how the search got there.
        "candidates": [{"candidate": describe(e.candidate), "latency_ms": e.latency_ms, "accuracy": e.accuracy,
                        "build_s": round(e.build_s, 2), "error": e.error or None, "knobs": e.candidate}
                       for e in search.evaluations],
        "files": {name: path.name for name, path in paths.items()},
    }
    if isinstance(search.latency, PredictedLatency):
        summary["chosen"]["latency_ms"]["predicted_by"] = search.latency_source
    return summary, {"choice": choice_text(cfg, search)}


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sidecars(cfg: BuildConfig, search: SearchResult, contents: dict[str, Any]) -> dict[str, Path]:
    """Write the chosen config and the Pareto plot next to the bundle; their paths."""
    paths = sidecar_paths(cfg.output)
    _atomic_write(paths["choice"], lambda p: p.write_text(contents["choice"], encoding="utf-8"))
    title = f"{cfg.model} on {cfg.target}: {len(search.evaluations)} candidates ({search.strategy})"
    _atomic_write(paths["plot"], lambda p: plot_front(p, search.evaluations, search.chosen,
                                                      target_ms=search.objective.latency_ms,
                                                      metric=search.metric, title=title))
    return paths
