"""Build one candidate and score its accuracy: the unit of work the executor runs in a worker.

Everything here is a module-level function on plain data (model bytes, pass names and options,
calibration arrays), so a process pool or a dask cluster can run it. Latency is not measured here:
workers run side by side and would skew each other's timings (see ``measure``); the parent times
the returned model bytes.

Accuracy, higher is better, from the first that applies:

* a user metric ``package.module:function``, called as ``function(model_bytes, feeds) -> float``
  (or a dict whose first value is primary), as prune-depth's ``metric`` score takes it;
* the zoo's held-out task metric for trained zoo models (``ZooModel.evaluate``, first key primary);
* the proxy: the lowest per-output agreement with the original's outputs (``accuracy.output_agreement``:
  Pearson per slice, or KL for probability outputs; see ``edgec.core.agreement``).

The search builds candidates on the fit part of the calibration data and scores them on the held-out part
(``compiler.calibration.split_calibration``), so recovery or ReplaceMe fitted to the fit part cannot
score its own fit.

A candidate's *drop* is the original's score minus the candidate's, the unit ``--max-drop`` uses
elsewhere (absolute points of the task metric, or 1 - agreement).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from edgec.compiler.pipeline import run_pipeline
from edgec.compiler.search.accuracy import ProxyTask, output_agreement
from edgec.compiler.search.target_facts import RecordingTarget
from edgec.core.agreement import output_agreement as output_agreement_of
from edgec.core.errors import ConfigError, EdgecError
from edgec.core.ir import Feeds
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.targets.registry import get_target

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error (a bug, see the log): "


@dataclasses.dataclass(frozen=True)
class Scorer:
    """How to score a model: ``kind`` metric | zoo | proxy, with what that kind needs."""

    kind: str
    name: str
    feeds: tuple[Feeds, ...] = ()
    reference: tuple[dict[str, np.ndarray], ...] = ()
    # The proxy: how each output is compared ("output0: pearson per axis-1 slice"), for the label.
    measures: str = ""

    def score(self, model: bytes) -> float:
        """The primary accuracy figure of ``model`` (higher is better)."""
        if self.kind == "metric":
            return _primary(load_metric(self.name)(model, list(self.feeds)), self.name)
        if self.kind == "zoo":
            from edgec.models.zoo import get_zoo_model

            return _primary(get_zoo_model(self.name).evaluate(model), f"zoo:{self.name}")
        return output_agreement(ProxyTask(model, self.feeds, self.reference))

    @property
    def label(self) -> str:
        """What the score is, for reports."""
        if self.kind == "metric":
            return f"metric {self.name}"
        if self.kind == "zoo":
            return f"zoo:{self.name} held-out metric"
        return f"agreement with the original's outputs (proxy; {self.measures})"


def _primary(value: Any, source: str) -> float:
    if isinstance(value, dict) and value:
        value = next(iter(value.values()))
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ConfigError(f"--metric {source}: returned {value!r}; expected a number or a dict of numbers")
    return float(value)


def load_metric(spec: str) -> Any:
    """Import ``package.module:function`` with the passes' own metric loader; a bad spec names --metric."""
    from edgec.passes.depth import load_metric as load

    return load(spec, "--metric")


@dataclasses.dataclass(frozen=True)
class CandidateTask:
    """One build to run: the original model, the candidate's pipeline, the data, and how to score it."""

    index: int
    model: bytes
    passes: tuple[str, ...]
    options: dict[str, dict[str, Any]]
    target: str
    calibration: tuple[Feeds, ...]
    seed: int
    scorer: Scorer


@dataclasses.dataclass(frozen=True)
class EvaluationContext:
    """What every candidate build of one search shares: the original model, target name, data, seed and scorer."""

    model: bytes
    target: str
    calibration: tuple[Feeds, ...]
    seed: int
    scorer: Scorer

    def task(self, index: int, passes: tuple[str, ...], options: dict[str, dict[str, Any]]) -> CandidateTask:
        """The build of one candidate's pipeline (``passes`` with their ``options``)."""
        return CandidateTask(index, self.model, passes, options, self.target, self.calibration, self.seed, self.scorer)


@dataclasses.dataclass(frozen=True)
class CandidateOutcome:
    """A built and scored candidate (``model`` bytes), or the one-line reason it failed."""

    index: int
    model: bytes | None
    accuracy: float | None
    build_s: float
    error: str = ""
    # The target facts the build read (``target_facts``): a target agreeing on them builds the same model.
    target_facts: tuple[str, ...] = ()


def build_model(model: bytes, passes: Sequence[str], options: dict[str, dict[str, Any]], target: str,
                calibration: Sequence[Feeds], seed: int, reads: set[str] | None = None) -> bytes:
    """Run the verified pipeline on a fresh copy of ``model``; the bytes of the result.

    ``reads``, when given, collects the names of the target facts the passes read (``target_facts``).
    """
    profile = get_target(target)
    ctx = BuildContext(target=profile if reads is None else RecordingTarget(profile, reads),
                       calibration=list(calibration), seed=seed)
    planned = [create_pass(name, ctx, options.get(name, {}), source="search candidate") for name in passes]
    return run_pipeline(onnx.load_from_string(model), planned, ctx).model.SerializeToString()


def _quiet_worker() -> None:
    """Workers start with logging unconfigured, and ORT's quantizer would then configure it at INFO."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def build_and_score(task: CandidateTask) -> CandidateOutcome:
    """Build and score one candidate; user-level failures (a pass refusing it) come back as ``error``."""
    _quiet_worker()
    start = time.perf_counter()
    reads: set[str] = set()
    try:
        # Calibrators print progress to stdout, which is the CLI's (and --json's) stdout in a worker.
        with contextlib.redirect_stdout(io.StringIO()):
            built = build_model(task.model, task.passes, task.options, task.target, task.calibration, task.seed,
                                reads)
            accuracy = task.scorer.score(built)
    except EdgecError as exc:
        return CandidateOutcome(task.index, None, None, time.perf_counter() - start,
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - a pass bug on one knob combination must not end the search
        # It is a bug all the same: the traceback goes to the log and the search reports the candidate failed.
        log.warning("candidate %s failed with an internal error", task.options, exc_info=True)
        return CandidateOutcome(task.index, None, None, time.perf_counter() - start,
                                f"{INTERNAL_ERROR}{type(exc).__name__}: {exc}")
    return CandidateOutcome(task.index, built, accuracy, time.perf_counter() - start,
                            target_facts=tuple(sorted(reads)))


def make_scorer(original: bytes, feeds: Sequence[Feeds], metric: str | None, zoo_name: str | None) -> Scorer:
    """The user's metric if given, else the trained zoo model's own, else the output-agreement proxy.

    ``feeds`` are the samples that score: the held-out part of the calibration data.
    """
    if metric:
        load_metric(metric)  # fail now, in the parent, with a message naming --metric
        return Scorer("metric", metric, tuple(feeds))
    if zoo_name is not None:
        return Scorer("zoo", zoo_name)
    from edgec.runtime.session import make_session, run

    session = make_session(original, level="all", threads=1)
    reference = tuple(run(session, f) for f in feeds)
    return Scorer("proxy", "", tuple(feeds), reference, _measures(reference))


def _measures(reference: Sequence[dict[str, Any]]) -> str:
    """How the proxy compares each output, read off the original's own outputs."""
    named = []
    for a in output_agreement_of(list(reference), list(reference)):
        sliced = f" per axis-{a.slice_axis} slice" if a.slice_axis is not None else ""
        named.append(f"{a.output}: {a.measure}{sliced}")
    return ", ".join(named)
