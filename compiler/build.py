"""edgec build: load, calibrate, check ops against the target, run verified passes, write a bundle."""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from edgec.compiler.calibration import CalibrationSplit, ImagePreprocess, load_calibration, split_calibration
from edgec.compiler.config import DEFAULT_PASSES, SEARCH_PASSES, BuildConfig, device_files
from edgec.compiler.frontend import load_model, parse_input_shapes
from edgec.compiler.frontend.load import confirm_opset_upgrade
from edgec.compiler.frontend.normalize import drop_contradicted_output_shapes
from edgec.compiler.frontend.onnx_file import nonfinite_weights
from edgec.compiler.memory_bound import check_tensor_sizes
from edgec.compiler.node_times import node_times
from edgec.compiler.pipeline import VERIFY_SAMPLES, PassRecord, PipelineResult, input_reference, run_pipeline
from edgec.compiler.report_page import write_page
from edgec.compiler.search import report as search_report
from edgec.compiler.search.evaluate import make_scorer
from edgec.compiler.search.objective import Objective
from edgec.compiler.search.orchestrate import DEFAULT_BUDGET, SearchResult, SearchSettings, run_search
from edgec.compiler.search.shared import SharedBuilds, SharedFinals
from edgec.compiler.search.space import build_space
from edgec.compiler.search.strategy import STRATEGIES
from edgec.compiler.search.target_facts import RecordingTarget
from edgec.core.errors import BundleError, ConfigError, ModelLoadError, UnsupportedOpError
from edgec.core.ir import Feeds
from edgec.passes.base import EdgecPass, available_passes, create_pass
from edgec.passes.context import BuildContext
from edgec.runtime.bundle import write_bundle
from edgec.runtime.session import compare_outputs
from edgec.runtime.timing import interleaved_medians
from edgec.targets.profile import TargetProfile
from edgec.targets.registry import get_target
from edgec.targets.support import fallback_nodes, place_nodes, unrunnable_nodes

log = logging.getLogger(__name__)
ZOO_PREFIX = "zoo:"


@dataclasses.dataclass
class BuildResult:
    """What a build produced, for the CLI to print."""

    bundle: Path
    target: str
    records: list[PassRecord]
    metrics: dict[str, Any]
    notes: list[str]
    warnings: list[str]


def _zoo_model(source: str) -> Any | None:
    if not source.startswith(ZOO_PREFIX):
        return None
    from edgec.models.zoo import get_zoo_model

    return get_zoo_model(source[len(ZOO_PREFIX):])


def check_target_ops(model: onnx.ModelProto, target: TargetProfile) -> list[str]:
    """Raise on nodes no EP of the target runs; return warnings for nodes that fall back."""
    placements = place_nodes(model, target)
    missing = unrunnable_nodes(placements)
    if missing:
        p = missing[0]
        raise UnsupportedOpError(
            f"node {p.node!r}: op {p.domain}:{p.op_type} cannot run on {target.name} "
            f"(none of {', '.join(target.ep_names)} has it)")
    by_provider: dict[str, collections.Counter[str]] = {}
    for p in fallback_nodes(placements, target):
        by_provider.setdefault(p.provider or "", collections.Counter())[p.op_type] += 1
    return [f"{sum(ops.values())} nodes ({', '.join(f'{op} x{n}' for op, n in ops.most_common())}) "
            f"fall back to {provider}, not {target.ep_names[0]}" for provider, ops in by_provider.items()]


def check_output(cfg: BuildConfig) -> None:
    """Refuse, before any work, an output path that cannot be written or that would replace an input."""
    out = cfg.output
    if (out.exists() or out.is_symlink()) and not cfg.force:
        raise BundleError(f"{out}: already exists; pass --force to replace it")
    if cfg.fmt not in ("dir", "zip"):
        raise ConfigError(f"--format: expected 'dir' or 'zip', got {cfg.fmt!r}")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BundleError(f"{out}: cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BundleError(f"{out}: cannot be written: no permission to create files in {parent}")
    target = out.resolve()
    for name, given in (("model", cfg.model), ("calibration data", cfg.calib)):
        if not given or given == "random" or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if source == target or target in source.parents:
            raise BundleError(f"{out}: would replace the {name} {given} (--force replaces the output path); "
                              "choose another output path")


def _measure(original: onnx.ModelProto, result: PipelineResult, ctx: BuildContext, samples: int,
             timing: bool) -> dict[str, Any]:
    """Whole-build figures: output error end to end, host latency before/after (when ``timing``), task metric.

    ``samples``: how many calibration samples were loaded (the passes may have seen only the fit part).
    """
    metrics: dict[str, Any] = {"calibration_samples": samples}
    original_bytes, final_bytes = original.SerializeToString(), result.model.SerializeToString()
    if ctx.calibration:
        errors = compare_outputs(result.input_outputs, result.outputs)
        metrics["output_error"] = [dataclasses.asdict(e) for e in errors]
    if ctx.calibration and timing:
        before_ms, after_ms = interleaved_medians([original_bytes, final_bytes], ctx.calibration[0], rounds=5,
                                                  runs=4, threads=ctx.target.intra_op_num_threads)
        metrics["host_latency_ms"] = {"before": before_ms, "after": after_ms, "ratio": after_ms / before_ms}
    if ctx.evaluate is not None:
        metrics["accuracy"] = {"before": ctx.evaluate(original_bytes), "after": ctx.evaluate(final_bytes)}
    return metrics


def _pass_options(cfg: BuildConfig, name: str) -> dict[str, Any]:
    """The pass's table from the config file, plus --max-drop for passes that take a budget."""
    options = dict(cfg.pass_options.get(name, {}))
    pass_cls = available_passes().get(name)
    if cfg.max_drop is not None and pass_cls and "max_drop" in pass_cls.config_cls.__dataclass_fields__:
        options.setdefault("max_drop", cfg.max_drop)
    return options


def _plan_passes(cfg: BuildConfig, ctx: BuildContext) -> list[EdgecPass[Any]]:
    """The configured passes, each with its options; options for absent passes are an error."""
    passes = [create_pass(name, ctx, _pass_options(cfg, name), source=str(cfg.config_path or "--passes"))
              for name in cfg.passes]
    if cfg.max_drop is not None and not any(hasattr(p.config, "max_drop") for p in passes):
        raise ConfigError(f"--max-drop: none of the passes {', '.join(cfg.passes)} trades accuracy for speed")
    for name in cfg.pass_options:
        if name not in cfg.passes:
            raise ConfigError(f"{cfg.config_path}: options given for pass {name!r}, which is not in 'passes'")
    return passes


def _search_pipeline(cfg: BuildConfig) -> tuple[str, ...]:
    """The passes a search varies: the user's, or edgec's search pipeline when none were named."""
    return SEARCH_PASSES if cfg.passes == DEFAULT_PASSES else cfg.passes


def _search(cfg: BuildConfig, proto: onnx.ModelProto, zoo: Any, split: CalibrationSplit, target: TargetProfile,
            on_phase: Callable[[str], None], shared: SharedBuilds | None = None) -> tuple[BuildConfig, SearchResult]:
    """Run the search; the config that builds its choice (passes and pass options), and the search result.

    Candidates are built on ``split.fit`` and scored on ``split.held_out``.
    """
    settings = search_settings(cfg)
    if not split.fit:
        raise ConfigError("the search needs calibration data to build and score candidates (--calib)")
    if cfg.pass_options:
        raise ConfigError(f"{cfg.config_path}: [pass-options] cannot be combined with a search; "
                          "the search chooses them")
    space = build_space(_search_pipeline(cfg), proto, target)
    scorer = make_scorer(proto.SerializeToString(), split.held_out, cfg.metric, _trained_zoo_name(zoo))
    result = run_search(proto, space, settings, target=target, calibration=split.fit, scorer=scorer,
                        on_progress=on_phase, shared=shared)
    passes, options = space.pipeline(result.chosen.candidate)
    chosen_cfg = dataclasses.replace(cfg, passes=passes, pass_options=options, max_drop=None)
    return chosen_cfg, result


def _trained_zoo_name(zoo: Any) -> str | None:
    return zoo.name if zoo is not None and zoo.trained else None


NO_SPLIT = "none: no lossy pass"


def _split_for(cfg: BuildConfig, feeds: list[Feeds]) -> tuple[CalibrationSplit | None, str]:
    """How the build splits its calibration data, and a warning when it cannot hold any out.

    None when no pass fits anything to it (no search, no lossy pass). An unknown pass name counts as lossless
    here: planning the passes names it as an error.
    """
    passes = available_passes()
    lossy = any(passes[name].tolerance.lossy for name in cfg.passes if name in passes)
    if not (cfg.searches or lossy):
        return None, ""
    split = split_calibration(feeds)
    asked = None if cfg.searches or split.in_sample else _samples_asked(cfg, passes)
    if asked is None or asked[1] <= len(split.fit):
        return split, ""
    # A pass that needs more samples than the fit part holds would fail on data that sufficed before the
    # split: it gets them all (and names a shortfall itself), and the scores are labelled in-sample.
    name, n = asked
    enough = next(k for k in range(n + 1, 4 * n + 4) if len(split_calibration([{}] * k).fit) >= n)
    why = (f"{name} asks for {n} calibration samples and {len(feeds)} were given: none held out, so the accuracy "
           f"on calibration samples is in-sample (give {enough} or more for a held-out score)")
    return CalibrationSplit(list(feeds), list(feeds), in_sample=True, held_out_indices=tuple(range(len(feeds)))), why


def _samples_asked(cfg: BuildConfig, passes: dict[str, type[EdgecPass[Any]]]) -> tuple[str, int] | None:
    """The pass asking for the most calibration samples (its config's ``samples``), and how many."""
    asked = []
    for name in cfg.passes:
        fields = {f.name: f for f in dataclasses.fields(passes[name].config_cls)} if name in passes else {}
        if "samples" in fields:
            n = _pass_options(cfg, name).get("samples", fields["samples"].default)
            if isinstance(n, int) and not isinstance(n, bool):
                asked.append((n, name))
    return (max(asked)[1], max(asked)[0]) if asked else None


def _calibration_scores(cfg: BuildConfig, original: bytes, final: bytes, samples: int, split: CalibrationSplit | None,
                        task: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    """``metrics.calibration``: the split, and the final model's score on each part of the calibration data.

    The held-out score is the honest one (a search ranked by it); the fit score shows how much the fitted
    parts (quantization ranges, recovery, ReplaceMe) flatter on the data they were fitted to. Both use the
    search's scorer on the samples (``--metric`` or the output-agreement proxy). ``task``: a trained zoo
    model's own metric and its ``metrics.accuracy``, on its evaluation split, which neither part touches.
    """
    if split is None:
        return {"split": NO_SPLIT, "samples": samples}
    out: dict[str, Any] = {"split": split.to_json()}
    if split.held_out:
        out["held_out"] = _part_score(cfg, original, final, split.held_out)
        # One sample is both parts: the same figure, scored once.
        out["fit"] = out["held_out"] if split.in_sample else _part_score(cfg, original, final, split.fit)
    if task is not None and all(task[1].get(k) for k in ("before", "after")):
        name, accuracy = task
        out["task"] = {k: next(iter(accuracy[k].values())) for k in ("before", "after")}
        out["task"]["metric"] = make_scorer(original, (), None, name).label
    return out


def _part_score(cfg: BuildConfig, original: bytes, final: bytes, feeds: list[Feeds]) -> dict[str, Any]:
    scorer = make_scorer(original, feeds, cfg.metric, None)
    return {"before": scorer.score(original), "after": scorer.score(final), "metric": scorer.label}


def _search_calibration(scores: dict[str, Any], zoo: Any) -> dict[str, Any]:
    """``metrics.search.calibration``: the split and the part scores the search ranked by.

    A trained zoo model's search ranked by its own evaluation split instead, so only the split is given.
    """
    if _trained_zoo_name(zoo) is not None:
        return {"split": scores["split"]}
    return {k: v for k, v in scores.items() if k in ("split", "held_out", "fit")}


def search_settings(cfg: BuildConfig) -> SearchSettings:
    """The search's settings from the config; out-of-range values name their option."""
    if cfg.latency_ms is not None and cfg.latency_ratio is not None:
        raise ConfigError("--latency-ratio: give either --latency-ms or --latency-ratio, not both")
    if cfg.latency_ratio is not None and not 0 < cfg.latency_ratio < 1:
        raise ConfigError(f"--latency-ratio: expected a fraction between 0 and 1, got {cfg.latency_ratio!r}")
    if cfg.latency_ms is None and cfg.latency_ratio is None and cfg.max_drop is None:
        raise ConfigError("--budget: a search needs a goal: --latency-ms, --latency-ratio, --max-drop, or both")
    if cfg.latency_ms is not None and not cfg.latency_ms > 0:
        raise ConfigError(f"--latency-ms: expected a positive number of milliseconds, got {cfg.latency_ms!r}")
    if cfg.budget is not None and (isinstance(cfg.budget, bool) or not isinstance(cfg.budget, int) or cfg.budget < 1):
        raise ConfigError(f"--budget: expected a whole number of candidates >= 1, got {cfg.budget!r}")
    if cfg.layer_budget is not None and (isinstance(cfg.layer_budget, bool) or not isinstance(cfg.layer_budget, int)
                                         or cfg.layer_budget < 0):
        raise ConfigError(f"--layer-budget: expected a whole number of candidates >= 0, got {cfg.layer_budget!r}")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    if cfg.device_file is not None and not Path(cfg.device_file).is_file():
        raise ConfigError(f"--device-file {cfg.device_file}: no such file")
    return SearchSettings(Objective(cfg.latency_ms, cfg.max_drop), cfg.budget or DEFAULT_BUDGET, cfg.strategy,
                          cfg.scheduler, device_file=cfg.device_file, seed=cfg.seed, latency_ratio=cfg.latency_ratio,
                          layer_budget=cfg.layer_budget)


def run_build(cfg: BuildConfig, on_phase: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build a bundle as ``cfg`` says (searching first when it asks). Raises EdgecError; writes nothing then.

    One target; several (``--target a,b``) make a package: ``edgec.compiler.package.run_package``.
    """
    if len(cfg.targets) > 1:
        raise ConfigError(f"--target {cfg.target}: several targets build a package (compiler.package.run_package)")
    target = get_target(cfg.target)
    cfg = dataclasses.replace(cfg, device_file=device_files(cfg).get(target.name))
    check_output(cfg)
    prepared = prepare_build(cfg, [target], on_phase)
    return build_for_target(cfg, prepared, target, on_phase)


@dataclasses.dataclass
class PreparedBuild:
    """What every target of one build shares: the model, its calibration data and split, the ORT reference."""

    loaded: Any  # frontend LoadedModel
    zoo: Any
    calib: Any  # calibration CalibrationSet
    split: CalibrationSplit | None
    split_warning: str
    reference: list[dict[str, Any]]
    weight_warnings: list[str]

    @property
    def pipeline_feeds(self) -> list[Feeds]:
        """The samples the passes fit and verify on: the fit part when split, else all."""
        return self.split.fit if self.split else self.calib.feeds


def prepare_build(cfg: BuildConfig, targets: list[TargetProfile], on_phase: Callable[[str], None]) -> PreparedBuild:
    """Load the model and calibration data once for ``targets``; every node must run on each of them."""
    on_phase("loading model")
    loaded = load_model(cfg.model, parse_input_shapes(cfg.input_shapes) or None, task=cfg.task)
    weight_warnings = nonfinite_weights(loaded.proto)
    if weight_warnings and cfg.strict:
        raise ModelLoadError(f"{cfg.model}: {weight_warnings[0]} (--strict)")
    zoo = _zoo_model(cfg.model)
    on_phase("loading calibration data")
    image = ImagePreprocess(**cfg.image_preprocess) if cfg.image_preprocess else None
    calib = load_calibration(cfg.calib, loaded.proto, zoo_feeds=zoo.calibration(cfg.calib_samples) if zoo else None,
                             image_config=image,
                             tokenizer_dir=Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else loaded.tokenizer_dir,
                             n=cfg.calib_samples, seed=cfg.seed, allow_nonfinite=cfg.calib_allow_nonfinite)
    loaded = confirm_opset_upgrade(loaded, calib.feeds[:VERIFY_SAMPLES])
    for target in targets:
        check_target_ops(loaded.proto, target)
    check_tensor_sizes(loaded.proto, calib.feeds[0], cfg.model)
    # ORT loads the model and runs the data; declarations its outputs contradict are not passed on. The
    # outputs are the pipeline's reference too (dropping a declared shape changes no value).
    # A search, or a pipeline with a lossy pass, builds on the fit part of the data and is scored on the rest
    # (a search's final pipeline too); lossless passes fit nothing and verify on every sample.
    split, split_warning = _split_for(cfg, calib.feeds)
    pipeline_feeds = split.fit if split else calib.feeds
    reference: list[dict[str, Any]] = []
    for target in targets:  # each target's optimization level must load it; the outputs do not depend on it
        reference = input_reference(loaded.proto, pipeline_feeds[:VERIFY_SAMPLES], calib.source, target)
    loaded.notes += drop_contradicted_output_shapes(loaded.proto, reference[0] if reference else {})
    return PreparedBuild(loaded, zoo, calib, split, split_warning, reference, weight_warnings)


def _final_pipeline(cfg: BuildConfig, prepared: PreparedBuild, ctx: BuildContext, keep_stages: bool,
                    on_phase: Callable[[str], None],
                    finals: SharedFinals | None) -> tuple[PipelineResult, list[tuple[str, bytes]]]:
    """Run the configured passes (or take an identical earlier target's run); the result and its stages.

    The stages (after each pass, when ``keep_stages``) let a search's report time where the saving comes from.
    """
    key = json.dumps([list(cfg.passes), {n: _pass_options(cfg, n) for n in cfg.passes}, cfg.seed],
                     sort_keys=True, default=repr)
    taken = finals.take(key, ctx.target) if finals is not None else None
    if taken is not None:
        return taken
    stages: list[tuple[str, bytes]] = []
    keep_stage = (lambda name, proto: stages.append((name, proto.SerializeToString()))) if keep_stages else None
    reads: set[str] = set()
    run_ctx = ctx if finals is None else dataclasses.replace(ctx, target=RecordingTarget(ctx.target, reads))
    result = run_pipeline(prepared.loaded.proto, _plan_passes(cfg, run_ctx), run_ctx,
                          on_pass=lambda n: on_phase(f"pass {n}"), on_model=keep_stage, reference=prepared.reference)
    if finals is not None:
        finals.keep(key, reads, ctx.target, result, stages)
    return result, stages


def build_for_target(cfg: BuildConfig, prepared: PreparedBuild, target: TargetProfile,
                     on_phase: Callable[[str], None], shared: SharedBuilds | None = None,
                     finals: SharedFinals | None = None) -> BuildResult:
    """Search (when asked), run the passes and write ``cfg.output``'s bundle for one target.

    ``shared`` and ``finals``: builds kept from the other targets of a multi-target build, taken where
    this target builds identically. ``cfg.device_file`` is this target's file alone.
    """
    loaded, zoo, calib, split = prepared.loaded, prepared.zoo, prepared.calib, prepared.split
    search = None
    if split is not None and cfg.searches:
        cfg, search = _search(cfg, loaded.proto, zoo, split, target, on_phase, shared)
    # A search's choice is built on the part its candidates were built on, so the bundle is the model it scored.
    ctx = BuildContext(target=target, calibration=prepared.pipeline_feeds, seed=cfg.seed,
                       evaluate=zoo.evaluate if zoo is not None and zoo.trained else None,
                       calibration_source=calib.source)
    result, stages = _final_pipeline(cfg, prepared, ctx, search is not None, on_phase, finals)
    split_warning = prepared.split_warning
    warnings = [*prepared.weight_warnings, *calib.warnings, *([split_warning] if split_warning else []),
                *check_target_ops(result.model, target)]
    if warnings and cfg.strict:
        raise ConfigError(f"--strict: {warnings[0]}")
    on_phase("measuring")
    metrics = _measure(loaded.proto, result, ctx, len(calib.feeds), cfg.timing)
    metrics["node_times"] = (node_times(loaded.proto, result.model, target, next(iter(ctx.calibration), None))
                             if cfg.timing else {"error": "not measured: the build was run with --no-timing"})
    if split is not None:
        on_phase("scoring on held-out calibration samples")
    metrics["calibration"] = _calibration_scores(
        cfg, loaded.proto.SerializeToString(), result.model.SerializeToString(), len(calib.feeds), split,
        (zoo.name, metrics["accuracy"]) if "accuracy" in metrics and zoo is not None else None)
    if split_warning:
        metrics["calibration"]["split"]["reason"] = split_warning
    sidecars: dict[str, Any] = {}
    if search is not None:
        on_phase("measuring the chosen candidate")
        metrics["search"], sidecars = search_report.summarise(cfg, search, loaded.proto, result.model, target,
                                                              calib.feeds[0], stages)
        metrics["search"]["calibration"] = _search_calibration(metrics["calibration"], zoo)
        warnings += search.warnings
    on_phase("writing bundle")
    # One stored sample per distinct calibration shape (write_bundle keeps the first of each), so that
    # `edgec verify` reruns the bundle at every shape it was calibrated at.
    try:
        bundle = write_bundle(cfg.output, model=result.model, target=target, sample_inputs=calib.feeds[0],
                              extra_samples=calib.feeds[1:], pass_records=[r.to_json() for r in result.records],
                              metrics=metrics, fmt=cfg.fmt, force=cfg.force)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: nothing was published
        why = "no space left" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "cannot write it"
        detail = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror or str(exc)
        raise BundleError(f"{cfg.output}: {why} ({detail}); nothing was written") from exc
    if search is not None:  # after the bundle: they describe it, and must not exist without it
        search_report.write_sidecars(cfg, search, sidecars)
    write_page(cfg.output)  # OUT.report.html: the manifest as one page for people
    notes = [*loaded.notes, *(f"plot: {path}" for path in _record_plots(cfg.output, result.records))]
    return BuildResult(bundle, target.name, result.records, metrics, notes, warnings)


def _record_plots(output: str | Path, records: list[PassRecord]) -> list[Path]:
    """Bar charts next to the bundle: a pass's node ranking and per-node precisions.

    ``OUT.<pass>-sensitivity.png`` per pass that ranked its nodes by sensitivity, ``OUT.<pass>-precision.png``
    per pass that gave nodes a precision each. The figures themselves are in the pass's record in the
    manifest; the plots are for people.
    """
    from edgec.passes.quant import plot_precisions, plot_ranking

    out = Path(output)
    paths = []
    for record in records:
        ranked = [(item["node"], item["error"]) for item in record.stats.get("sensitivity", [])]
        if ranked:
            path = out.with_name(f"{out.name}.{record.name}-sensitivity.png")
            paths.append(plot_ranking(ranked, path, f"{record.name}: output error with one node quantized"))
        if record.stats.get("precision_of"):  # a per-node map: the precision each node got
            path = out.with_name(f"{out.name}.{record.name}-precision.png")
            paths.append(plot_precisions(record.stats["precision_of"], path, f"{record.name}: precision per node"))
    return paths
