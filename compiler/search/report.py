"""What a search leaves behind: a manifest summary, the chosen edgec.toml and the Pareto plot.

The bundle format lists every file it holds (the loader refuses others), so the search's files sit
next to the bundle, named after it: ``OUT.search-choice.toml`` (``edgec build --config`` on it
rebuilds the chosen model exactly) and ``OUT.pareto.png``. The manifest's ``metrics.search`` holds
the summary: objective, budget and evaluations, the Pareto front, the chosen candidate's
latency as the search estimated it and as measured again on the final bundle model, each
pass's share of the saving, and (a device file on a host target) the latency model's calibration.

Pass shares: the original and the model after each pass that changed it are timed in one
interleaved run (``measure_latencies``), so host drift hits every stage alike; a pass's share is
the latency it removed over the latency the whole pipeline removed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from edgec.compiler.config import BuildConfig
from edgec.compiler.search.layers import layer_summary, plot_layers
from edgec.compiler.search.measure import Measurement, measure_latencies
from edgec.compiler.search.objective import HEADROOM
from edgec.compiler.search.orchestrate import SearchResult
from edgec.compiler.search.pareto import describe, front_rows, pareto_front, plot_front
from edgec.compiler.search.space import choice_toml, model_reference
from edgec.targets.profile import TargetProfile


def sidecar_paths(output: Path) -> dict[str, Path]:
    """Where the chosen config and the plot go: next to the bundle, named after it."""
    return {"choice": output.with_name(f"{output.name}.search-choice.toml"),
            "plot": output.with_name(f"{output.name}.pareto.png"),
            "layers": output.with_name(f"{output.name}.layers.png")}


# Below this share of the original's latency, the whole saving is within timing noise: no shares.
MIN_SAVING = 0.01


@dataclasses.dataclass(frozen=True)
class StageTiming:
    """The model after one pass: whether the pass changed it, and its latency.

    An unchanged stage is not timed again: ``latency`` is the previous stage's measurement, the same object.
    """

    name: str
    changed: bool
    latency: Measurement


def time_stages(original: bytes, stages: Sequence[tuple[str, bytes]], target: TargetProfile,
                feeds: dict[str, Any]) -> tuple[Measurement, list[StageTiming]]:
    """Time the original and each distinct stage in one interleaved run, at the target's threads and level."""
    models, positions, previous = [original], [], original
    for _, model in stages:
        if model != previous:
            models.append(model)
        positions.append(len(models) - 1)
        previous = model
    timed = measure_latencies(models, feeds, threads=target.intra_op_num_threads,
                              level=target.graph_optimization_level)
    timings, last = [], 0
    for (name, _), position in zip(stages, positions, strict=True):
        timings.append(StageTiming(name, position != last, timed[position]))
        last = position
    return timed[0], timings


def _no_split_reason(original_ms: float, final_ms: float) -> str | None:
    """Why the saving cannot be split into shares, or None when it can."""
    if final_ms > original_ms:
        return f"the passes made the model slower ({original_ms:.4g} -> {final_ms:.4g} ms): no saving to split"
    if original_ms - final_ms < MIN_SAVING * original_ms:
        return (f"the passes saved {original_ms - final_ms:.4g} of {original_ms:.4g} ms, under {MIN_SAVING:.0%}: "
                "too little to split")
    return None


def share_rows(original: Measurement, timings: Sequence[StageTiming]) -> list[dict[str, Any]]:
    """One row per pass: latency after it, ms it saved, and its share of the pipeline's saving.

    A share is signed: a pass that slows the model (channel-pruned weights read through a copy, say)
    has a negative share, and the other passes' shares then add up to more than 1, so all sum to 1. When the
    pipeline saved less than ``MIN_SAVING`` of the original's latency (or made it slower), the split
    would divide by noise: every share is None and the row says why. An unchanged pass saved 0.
    """
    final_ms = timings[-1].latency.median_ms if timings else original.median_ms
    total_ms = original.median_ms - final_ms
    reason = _no_split_reason(original.median_ms, final_ms)
    rows, previous_ms = [], original.median_ms
    for stage in timings:
        ms_after = stage.latency.median_ms
        saved_ms = previous_ms - ms_after if stage.changed else 0.0
        row: dict[str, Any] = {"pass": stage.name, "changed": stage.changed, "ms_after": ms_after,
                               "saved_ms": saved_ms}
        if not stage.changed:
            row["share"] = 0.0
        elif reason is None:
            row["share"] = saved_ms / total_ms
        else:
            row.update(share=None, reason=reason)
        rows.append(row)
        previous_ms = ms_after
    return rows


def pass_shares(original: bytes, stages: Sequence[tuple[str, bytes]], target: TargetProfile,
                feeds: dict[str, Any]) -> list[dict[str, Any]]:
    """Each pass's share of the latency saving: ``stages`` is (pass name, model bytes after it), in order.

    Shares are signed (a pass that slows the model has a negative one) and None when the total
    saving is under ``MIN_SAVING`` of the original; see ``share_rows``.
    """
    return share_rows(*time_stages(original, stages, target, feeds))


def _measured(original: bytes, final: bytes, target: TargetProfile, feeds: dict[str, Any]) -> dict[str, Any]:
    """The bundle model's latency, timed in a pair with the original as the search timed every candidate.

    Not taken from the stage run: more models in a round leave less of each in cache (ResNet-50 ran
    ~10% slower alternating with one other model than alone), and this figure is compared with the
    search's estimate.
    """
    base, chosen = measure_latencies([original, final], feeds,
                                     threads=target.intra_op_num_threads, level=target.graph_optimization_level)
    return {"median_ms": chosen.median_ms, "original_ms": base.median_ms,
            "ratio_to_original": chosen.median_ms / base.median_ms, "stable": chosen.stable}


def choice_text(cfg: BuildConfig, search: SearchResult) -> str:
    """The chosen candidate as an edgec.toml that rebuilds it."""
    calibration = {"source": cfg.calib, "samples": cfg.calib_samples, "image": cfg.image_preprocess,
                   "tokenizer": cfg.tokenizer_dir}
    top = {"model": model_reference(cfg.model), "target": cfg.target, "task": cfg.task, "seed": cfg.seed,
           "input-shapes": list(cfg.input_shapes) or None}
    chosen = search.chosen
    header = (f"Chosen by `edgec build` search: {describe(chosen.candidate)}; latency {chosen.latency_ms:.4g} ms "
              f"({search.latency_source}), {search.metric} {chosen.accuracy:.5g}.\n"
              "Rebuild it with: edgec build --config THIS_FILE -o OUT")
    return choice_toml(top, cfg.passes, cfg.pass_options,
                       {"calibration": {k: v for k, v in calibration.items() if v is not None}}, header)


def summarise(cfg: BuildConfig, search: SearchResult, original: onnx.ModelProto, final: onnx.ModelProto,
              target: TargetProfile, feeds: dict[str, Any],
              stages: Sequence[tuple[str, bytes]] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's ``metrics.search``, and the sidecar contents to write once the bundle exists.

    ``stages``: (pass name, model bytes after it) for each pass of the pipeline that built ``final``,
    in order. Without them the report has no pass shares.
    """
    chosen = search.chosen
    objective = search.objective
    paths = sidecar_paths(cfg.output)
    original_bytes = original.SerializeToString()
    final_bytes = stages[-1][1] if stages else final.SerializeToString()  # the last stage is the bundle model
    measured = _measured(original_bytes, final_bytes, target, feeds)
    summary: dict[str, Any] = {
        # A candidate fits the latency target when it measured within ``fits_within_ms`` (the headroom).
        "objective": {"latency_ms": objective.latency_ms, "max_drop": objective.max_drop,
                      "fits_within_ms": None if objective.latency_ms is None else HEADROOM * objective.latency_ms},
        "strategy": search.strategy, "budget": search.budget, "evaluations": len(search.evaluations),
        "failed": sum(not e.ok for e in search.evaluations), "wall_s": round(search.wall_s, 2),
        "metric": search.metric, "latency_source": search.latency_source,
        "original": {"latency_ms": search.baseline_ms, "accuracy": search.baseline_accuracy},
        "chosen": {"candidate": describe(chosen.candidate), "knobs": chosen.candidate, "digest": chosen.model_digest,
                   "passes": list(cfg.passes),
                   "accuracy": chosen.accuracy, "drop": chosen.drop,
                   "latency_ms": {"predicted": chosen.latency_ms, "measured": measured["median_ms"],
                                  "measured_on": "host", "measured_ratio_to_original": measured["ratio_to_original"]},
                   "in_window": objective.in_window(chosen) if objective.latency_ms is not None else None},
        "pareto": front_rows(pareto_front(search.evaluations), chosen),
        "pass_shares": pass_shares(original_bytes, stages, target, feeds) if stages else [],
        "confirmations": search.confirmations,
        # Every evaluation in the order the strategy asked for it: how the search got there.
        "candidates": [{"candidate": describe(e.candidate), "latency_ms": e.latency_ms, "accuracy": e.accuracy,
                        "build_s": round(e.build_s, 2), "error": e.error or None, "knobs": e.candidate,
                        "digest": e.model_digest or None}
                       for e in search.evaluations],
        "files": {name: path.name for name, path in paths.items() if name != "layers" or search.layer_phase},
    }
    if search.layer_phase is not None:
        # Per layer of the chosen model: its width and what it keeps (all at the uniform ratio unless a
        # per-layer candidate won), and how many per-layer candidates were tried.
        summary["layers"] = {"knob": search.layer_phase.knob.key,
                             "evaluated": sum(bool(e.candidate.get(search.layer_phase.knob.key))
                                              for e in search.evaluations),
                             "chosen": layer_summary(search.layer_phase, chosen.candidate)}
    calibration = getattr(search.latency, "calibration", None)  # a device file calibrated on host timings
    if not search.latency.measured or calibration is not None:
        summary["chosen"]["latency_ms"]["predicted_by"] = search.latency_source
    if calibration is not None:
        summary["latency_calibration"] = calibration
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
    if search.layer_phase is None:
        paths.pop("layers").unlink(missing_ok=True)  # an earlier build's chart would describe another model
        return paths
    rows = layer_summary(search.layer_phase, search.chosen.candidate)
    _atomic_write(paths["layers"], lambda p: plot_layers(p, rows, f"{cfg.model}: channels per layer "
                                                                  f"({describe(search.chosen.candidate)})"))
    return paths
