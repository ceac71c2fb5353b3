"""Run a hardware-aware search: ask the strategy, build in parallel, time in the parent, repeat.

One round: the strategy proposes as many candidates as there are workers; the executor (a process
pool, or dask with ``--scheduler``) builds and scores them in parallel; the parent then times the
returned models one after another, interleaved with the original model (``measure_latencies``),
never two timings at once, so candidates do not compete for the cores they are judged on. Each
candidate's latency is its measured ratio to the original in the same round times the original's
latency, the median over every round so far: load on a shared machine that comes and goes between
rounds moves candidate and reference alike and cancels in the ratio, and no single burst sets the
scale (at the end every evaluation is rescaled to the final median before the choice is made).
Non-host targets with a device file are priced by that device's ``LatencyModel`` instead (no
timing); without one they are timed here, with a warning.

The search ends when the budget (evaluations, not seconds: the cost of a build varies by orders of
magnitude between models) is spent or the strategy has nothing left to try. Under a measured latency
target the choice is then *confirmed*: timed again against the original over more rounds, its two
ratios averaged, and the choice remade if it no longer fits (at most ``CONFIRMATIONS`` times), so a
candidate that one lucky round put under the target is not what the user gets. The result holds
every evaluation; the caller builds the chosen one into the bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence

import onnx

from edgec.compiler.search.evaluate import (
    INTERNAL_ERROR,
    CandidateOutcome,
    CandidateTask,
    EvaluationContext,
    Scorer,
    build_and_score,
)
from edgec.compiler.search.executor import Executor, make_executor
from edgec.compiler.search.latency_model import CalibratedLatency, PredictedLatency
from edgec.compiler.search.layers import LayerEvolution, LayerPhase, fit_cost, offspring_evaluations, prepare
from edgec.compiler.search.measure import HostLatency, LatencySource
from edgec.compiler.search.objective import HEADROOM, Evaluation, Objective
from edgec.compiler.search.pareto import describe
from edgec.compiler.search.shared import SharedBuilds
from edgec.compiler.search.space import SearchSpace
from edgec.compiler.search.strategy import STRATEGIES
from edgec.core import progress as core_progress
from edgec.core.errors import EdgecError
from edgec.core.ir import Feeds
from edgec.targets.profile import TargetProfile

log = logging.getLogger(__name__)
DEFAULT_BUDGET = 24
DEFAULT_WORKERS = 2
# Evaluations of the per-layer phase, as a share of the uniform search's budget (``--layer-budget`` sets it).
LAYER_SHARE = 0.5
CONFIRMATIONS = 3  # choices re-timed at most; then the best confirmed one that still fits is taken
CONFIRM_ROUNDS = 12  # interleaved rounds of a confirmation (a search timing runs 5 or more)


class SearchError(EdgecError):
    """No candidate meets the latency target or accuracy budget (exit 2, with the closest found)."""


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """What to search for and with what (one field per CLI flag)."""

    objective: Objective
    budget: int = DEFAULT_BUDGET
    strategy: str = "guided"
    scheduler: str | None = None
    workers: int = DEFAULT_WORKERS
    device_file: str | None = None
    seed: int = 0
    # The latency target as a fraction of the original's, both timed here in the same rounds: free of
    # the drift a shared host puts between an absolute target and the search's own measurements.
    latency_ratio: float | None = None
    # Evaluations of the per-layer phase (``compiler.search.layers``); None: ``LAYER_SHARE`` of the budget.
    layer_budget: int | None = None

    @property
    def layer_evaluations(self) -> int:
        """The per-layer phase's budget; by default none for random search, the baseline at ``budget``."""
        if self.layer_budget is not None:
            return self.layer_budget
        return int(self.budget * LAYER_SHARE) if self.strategy == "guided" else 0


@dataclasses.dataclass
class SearchResult:
    """Every evaluation, the chosen one, and the references they were judged against."""

    evaluations: list[Evaluation]
    chosen: Evaluation
    objective: Objective
    strategy: str
    budget: int
    baseline_ms: float
    baseline_accuracy: float
    latency: LatencySource
    metric: str
    wall_s: float
    warnings: list[str]
    # Choices timed again before one was accepted: candidate label, ratio in the search, ratio again.
    confirmations: list[dict] = dataclasses.field(default_factory=list)
    # The per-layer phase, when one ran: its layers and levels, to describe a per-layer choice.
    layer_phase: LayerPhase | None = None

    @property
    def latency_source(self) -> str:
        """How candidate latency was obtained."""
        return self.latency.label


def latency_source(original: bytes, feeds: Feeds, target: TargetProfile, device_file: str | None,
                   warnings: list[str]) -> LatencySource:
    """The target's latency: predicted from a device file, else measured here.

    A device file for a host target is calibrated on the original's and the confirmed choices' host timings.
    """
    if device_file is not None and target.host_measurable:
        return CalibratedLatency(original, feeds, target, device_file)
    if device_file is not None:
        return PredictedLatency(original, device_file)
    if not target.host_measurable:
        warnings.append(f"target {target.name} is not this host and no --device-file was given: "
                        "the search used this host's latency")
    return HostLatency(original, feeds, target)


class _ModelCache:
    """The built models a confirmation may ask for: the few most accurate timed near the target or under it.

    Keeping every candidate would hold the whole search in memory (ResNet-50: ~100 MB a model); the
    chosen one is almost always among these, and one that is not is rebuilt.
    """

    SIZE = 4
    NEAR = 1.03  # a candidate this close over the target can still fit once every timing is rescaled

    def __init__(self) -> None:
        self.models: dict[str, tuple[float, bytes]] = {}

    def offer(self, digest: str, model: bytes, accuracy: float | None, ms: float, target_ms: float | None) -> None:
        """Keep ``model`` if it is among the most accurate near the target (a latency target only)."""
        if target_ms is None or accuracy is None or ms > self.NEAR * target_ms:
            return
        self.models[digest] = (accuracy, model)
        if len(self.models) > self.SIZE:
            del self.models[min(self.models, key=lambda d: self.models[d][0])]

    def get(self, digest: str) -> bytes | None:
        """The model with this digest, if kept."""
        kept = self.models.get(digest)
        return kept[1] if kept is not None else None


@dataclasses.dataclass
class _Progress:
    """The candidates bar (count, ETA, best so far) and the phase line (what the search is doing now)."""

    budget: int
    report: Callable[[str], None]
    bar: core_progress.Task = dataclasses.field(default_factory=core_progress.Task)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    done: int = 0
    best: str = "none yet"

    def update(self, stage: str = "") -> None:
        self.bar.update(completed=self.done, total=self.budget, label=f"search candidates, best {self.best}")
        self.report(f"search{stage}")


@dataclasses.dataclass(frozen=True)
class SearchRun:
    """One search in progress: what every round uses, and the state the rounds share (mutated in place)."""

    space: SearchSpace
    settings: SearchSettings
    context: EvaluationContext
    executor: Executor
    latency: LatencySource
    baseline_accuracy: float
    progress: _Progress
    timed: dict[str, float]  # model digest -> latency over the original's
    models: _ModelCache = dataclasses.field(default_factory=_ModelCache)
    confirmations: list[dict] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    # Digests whose latency is the per-layer cost model's, not a timing: a confirmation replaces it.
    priced: set[str] = dataclasses.field(default_factory=set)
    layer_phases: list[LayerPhase] = dataclasses.field(default_factory=list)

    def tasks(self, candidates: Sequence[dict]) -> list[CandidateTask]:
        """The builds of ``candidates``' pipelines, indexed in order."""
        return [self.context.task(i, *self.space.pipeline(c)) for i, c in enumerate(candidates)]


def _evaluate_round(run: SearchRun, candidates: list[dict], target_ms: float | None) -> list[Evaluation]:
    tasks = run.tasks(candidates)
    run.progress.update(f" (building {len(tasks)} candidates)")
    built = itertools.count(1)
    outcomes: list[CandidateOutcome] = run.executor.map(
        build_and_score, tasks,
        on_result=lambda _i, _r: run.progress.update(f" (built {next(built)} of {len(tasks)} this round)"))
    run.progress.update(" (timing)")
    seen = run.timed
    digests = _time(outcomes, run.latency, seen)
    baseline_ms = run.latency.baseline_ms  # after the timing: a host's reference moves with every round
    for o in outcomes:
        if o.model is not None:
            run.models.offer(digests[o.index], o.model, o.accuracy, seen[digests[o.index]] * baseline_ms, target_ms)
    return [Evaluation(candidates[o.index], seen[digests[o.index]] * baseline_ms if o.index in digests
                       else None, o.accuracy, None if o.accuracy is None else run.baseline_accuracy - o.accuracy,
                       o.build_s, o.error, digests.get(o.index, ""))
            for o in outcomes]


def _time(outcomes: Sequence[CandidateOutcome], latency: LatencySource, seen: dict[str, float]) -> dict[int, str]:
    """Time the built models new to ``seen`` (digest -> ratio to the original); each outcome's digest.

    A model byte-identical to one timed before keeps that time.

    Different knob values often build the same model (a ratio too small to drop one channel
    multiple, a recovery option on an unpruned net); timing it again would only hand the strategy
    noise dressed as a difference.
    """
    digests = {o.index: hashlib.sha256(o.model).hexdigest() for o in outcomes if o.model is not None}
    fresh: dict[str, bytes] = {}
    for o in outcomes:
        if o.model is not None and digests[o.index] not in seen:
            fresh[digests[o.index]] = o.model
    seen.update(zip(fresh, latency.ratios(list(fresh.values())), strict=True))
    return digests


def _unreachable(objective: Objective, evaluations: list[Evaluation], target: str,
                 latency_ratio: float | None = None, baseline_ms: float = 0.0) -> SearchError:
    done = [e for e in evaluations if e.ok]
    if not done:
        first = next((e.error for e in evaluations if e.error), "no candidate was built")
        return SearchError(f"search: no candidate could be built ({first})")
    if objective.latency_ms is not None and not any(objective.fits_latency(e) for e in done):
        fastest = min(done, key=lambda e: e.ms)
        near = (f" (within the target but not its {1 - HEADROOM:.0%} headroom for timing noise)"
                if fastest.ms <= objective.latency_ms else "")
        goal = (f"--latency-ratio {latency_ratio:g} ({objective.latency_ms:.4g} ms of the original's "
                f"{baseline_ms:.4g} ms)" if latency_ratio is not None else f"--latency-ms {objective.latency_ms:g}")
        return SearchError(f"{goal}: unreachable on {target}; the fastest candidate found runs in "
                           f"{fastest.latency_ms:.4g} ms{near} ({describe(fastest.candidate)}, "
                           f"{len(evaluations)} candidates tried)")
    pool = [e for e in done if objective.fits_latency(e)]
    closest = min(pool, key=lambda e: e.lost)
    where = f" within {objective.latency_ms:g} ms" if objective.latency_ms is not None else ""
    return SearchError(f"--max-drop {objective.max_drop:g}: no candidate{where} is within it; the smallest "
                       f"drop found is {closest.drop:.4g} at {closest.latency_ms:.4g} ms "
                       f"({describe(closest.candidate)})")


def _rescaled(evaluations: list[Evaluation], timed: dict[str, float], baseline_ms: float) -> list[Evaluation]:
    """Every evaluation's latency from its ratio and the latest, steadiest reference."""
    return [dataclasses.replace(e, latency_ms=timed[e.model_digest] * baseline_ms) if e.ok else e
            for e in evaluations]


def _confirmed(run: SearchRun, evaluations: list[Evaluation]) -> tuple[list[Evaluation], Objective, Evaluation | None]:
    """The evaluations rescaled, the objective and the choice, after the choice is timed again.

    Host latency targets only. The confirmation's ratio is averaged with the search's (two
    independent medians), and if the choice no longer fits, the next best is confirmed in turn, up
    to ``CONFIRMATIONS`` models. Once they are spent, the best confirmed model that still fits is
    taken; an unconfirmed one only when none does, with a warning. Each confirmation is appended to
    ``run.confirmations``.
    """
    latency, timed = run.latency, run.timed
    confirmed: set[str] = set()
    while True:
        evaluations = _rescaled(evaluations, timed, latency.baseline_ms)
        objective = _objective(run.settings, latency.baseline_ms)
        chosen = objective.best(evaluations)
        if (chosen is None or objective.latency_ms is None or not latency.measured
                or chosen.model_digest in confirmed):
            return evaluations, objective, chosen
        if len(confirmed) >= CONFIRMATIONS:
            held = objective.best([e for e in evaluations if e.model_digest in confirmed])
            if held is None:
                run.warnings.append(f"the choice ({describe(chosen.candidate)}) was not timed again: the "
                                    f"{CONFIRMATIONS} choices before it no longer fitted the target when re-timed")
            return evaluations, objective, held or chosen
        confirmed.add(chosen.model_digest)
        model = run.models.get(chosen.model_digest) or _rebuild(run, chosen)
        if model is None:
            return evaluations, objective, chosen
        (again,) = latency.ratios([model], min_rounds=CONFIRM_ROUNDS)
        run.confirmations.append({"candidate": describe(chosen.candidate), "digest": chosen.model_digest,
                                  "search_ratio": timed[chosen.model_digest], "again_ratio": again,
                                  # a per-layer price, replaced by the timing rather than averaged with it
                                  "priced": chosen.model_digest in run.priced})
        previous = timed[chosen.model_digest]
        timed[chosen.model_digest] = again if chosen.model_digest in run.priced else (previous + again) / 2
        run.priced.discard(chosen.model_digest)


def _layer_phase(run: SearchRun, evaluations: list[Evaluation], objective: Objective,
                 target: TargetProfile) -> list[Evaluation]:
    """Per-layer levels around the best uniform candidate (``compiler.search.layers``); their evaluations.

    Offspring are built and scored like any candidate, and priced by the per-layer cost model (by the
    latency source itself where it prices models: a device file); a choice among them is timed before it is
    accepted (``_confirmed``).
    """
    budget = run.settings.layer_evaluations
    if budget <= 0:
        return []
    feeds = run.context.calibration[0]
    # On the latest reference: a candidate the first rounds timed over the target may fit now.
    evaluations = _rescaled(evaluations, run.timed, run.latency.baseline_ms)
    objective = _objective(run.settings, run.latency.baseline_ms)
    phase = prepare(run.space, evaluations, objective, run.context.model, target, feeds)
    if phase is None:
        return []
    run.layer_phases.append(phase)
    cost = fit_cost(phase, evaluations, run.context.model, feeds)
    evolution = LayerEvolution(phase, cost, random.Random(run.settings.seed))
    out: list[Evaluation] = []
    run.progress.budget += budget
    while len(out) < budget:
        choices = evolution.propose(min(2 * run.settings.workers, budget - len(out)))
        if not choices:
            break
        outcomes = run.executor.map(build_and_score, run.tasks([phase.candidate(c) for c in choices]))
        results = offspring_evaluations(phase, cost, choices, outcomes, run.baseline_accuracy)
        if run.latency.prices:  # a device file prices the built graph itself, as it priced every candidate
            _time(outcomes, run.latency, run.timed)
            results = [dataclasses.replace(r, latency_ms=run.timed[r.model_digest] * run.latency.baseline_ms)
                       if r.ok else r for r in results]
        for result, outcome in zip(results, outcomes, strict=True):
            if result.ok and result.model_digest not in run.timed:
                run.timed[result.model_digest] = result.ms / run.latency.baseline_ms
                run.priced.add(result.model_digest)
            if outcome.model is not None and result.ok:
                run.models.offer(result.model_digest, outcome.model, result.accuracy, result.ms, objective.latency_ms)
        evolution.select([(c, r.accuracy) for c, r in zip(choices, results, strict=True)])
        out += results
        run.progress.done += len(results)
        run.progress.update(" (per-layer widths)")
    return out


def _rebuild(run: SearchRun, chosen: Evaluation) -> bytes | None:
    (outcome,) = run.executor.map(build_and_score, run.tasks([chosen.candidate]))
    return outcome.model


def _objective(settings: SearchSettings, baseline_ms: float) -> Objective:
    """The settings' objective, a relative latency target turned into ms on the current baseline."""
    if settings.latency_ratio is None:
        return settings.objective
    return dataclasses.replace(settings.objective, latency_ms=settings.latency_ratio * baseline_ms)


def run_search(original: onnx.ModelProto, space: SearchSpace, settings: SearchSettings, *, target: TargetProfile,
               calibration: Sequence[Feeds], scorer: Scorer,
               on_progress: Callable[[str], None] = lambda _: None, shared: SharedBuilds | None = None) -> SearchResult:
    """Search ``space`` for the best candidate under ``settings.objective``; raises SearchError if none fits.

    ``shared``: builds kept from other targets' searches of the same model and data (``search.shared``);
    candidates this target builds identically are taken from it, and this search's builds are added.
    ``on_progress`` hears what the search does now; the candidates' count is an ``edgec.core.progress`` task.
    """
    with core_progress.task("search candidates", total=settings.budget) as bar:
        return _search(original, space, settings, target, calibration, scorer,
                       _Progress(settings.budget, on_progress, bar), shared)


def _search(original: onnx.ModelProto, space: SearchSpace, settings: SearchSettings, target: TargetProfile,
            calibration: Sequence[Feeds], scorer: Scorer, progress: _Progress,
            shared: SharedBuilds | None) -> SearchResult:
    original_bytes = original.SerializeToString()
    warnings: list[str] = []
    progress.update(" (timing the original)")
    latency = latency_source(original_bytes, calibration[0], target, settings.device_file, warnings)
    baseline_accuracy = scorer.score(original_bytes)
    objective = _objective(settings, latency.baseline_ms)
    strategy = STRATEGIES[settings.strategy](space, objective, settings.budget, settings.seed)
    context = EvaluationContext(original_bytes, target.name, tuple(calibration), settings.seed, scorer)
    evaluations: list[Evaluation] = []
    executor = make_executor(settings.scheduler, settings.workers)
    if shared is not None:
        executor = shared.executor(executor, target)
    run = SearchRun(space, settings, context, executor, latency, baseline_accuracy, progress,
                    timed={hashlib.sha256(original_bytes).hexdigest(): 1.0}, warnings=warnings)
    try:
        while len(evaluations) < settings.budget:
            batch = strategy.ask(min(settings.workers, settings.budget - len(evaluations)))
            if not batch:
                break
            results = _evaluate_round(run, batch, objective.latency_ms)
            strategy.tell(results)
            evaluations += results
            progress.done = len(evaluations)
            best = objective.best(evaluations)
            if best is not None:
                progress.best = f"{best.accuracy:.4g} at {best.latency_ms:.3g} ms"
            progress.update()
        evaluations += _layer_phase(run, evaluations, objective, target)
        internal = [e for e in evaluations if e.error.startswith(INTERNAL_ERROR)]
        if internal:
            warnings.append(f"{len(internal)} candidate(s) failed with an internal error (a bug; logged), e.g. "
                            f"{describe(internal[0].candidate)}: {internal[0].error.removeprefix(INTERNAL_ERROR)}")
        if objective.latency_ms is not None and latency.measured:
            progress.update(" (timing the choice again)")
        evaluations, objective, chosen = _confirmed(run, evaluations)
    finally:
        executor.close()
    if chosen is None:
        raise _unreachable(objective, evaluations, target.name, settings.latency_ratio, latency.baseline_ms)
    return SearchResult(evaluations, chosen, objective, settings.strategy, settings.budget,
                        latency.baseline_ms, baseline_accuracy, latency, scorer.label,
                        time.perf_counter() - progress.start, warnings, run.confirmations,
                        run.layer_phases[0] if run.layer_phases else None)
