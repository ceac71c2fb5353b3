"""Candidate builds shared between the searches of one multi-target build (``edgec build --target a,b``).

Each target gets its own search, one after another, and many candidates build the same model on several
targets (a candidate whose passes read nothing that differs between them). ``SharedBuilds`` keeps every
successful build under its pipeline (passes and options) with the target facts the build read
(``target_facts``); a later search for a target that agrees on all of those facts takes the model and its
accuracy instead of building and scoring it again. Failed builds are not shared: their messages name the
target. Latency is never shared: each search times or prices every model itself.

All the searches must build the same original model on the same calibration data with the same seed
and scorer, as the searches of one ``edgec build`` do. Kept models wait in a temporary folder, not in
memory (a ResNet-50 candidate is ~100 MB). The first executor handed over serves every search, so the
worker processes start once. ``SharedFinals`` does the same for each target's final pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import onnx

from edgec.compiler.pipeline import PipelineResult
from edgec.compiler.search.evaluate import CandidateOutcome, CandidateTask, build_and_score
from edgec.compiler.search.executor import Executor, OnResult
from edgec.compiler.search.target_facts import LABELS, agrees
from edgec.targets.profile import TargetProfile

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class _Kept:
    facts: tuple[str, ...]  # the target facts the build read, labels left out
    target: TargetProfile  # the target it was built for
    outcome: CandidateOutcome  # with model=None: the bytes are in ``path``
    path: Path


class SharedBuilds:
    """Successful candidate builds, kept for the searches of the targets after the one that built them."""

    def __init__(self) -> None:
        """An empty store; ``close`` removes what it kept."""
        self._kept: dict[str, list[_Kept]] = {}
        self._folder: Path | None = None
        self._executor: Executor | None = None
        self.keep = True  # False for the last search: nothing after it could take a build
        self.built: dict[str, int] = {}  # target name -> candidates built in its search
        self.shared: dict[str, int] = {}  # target name -> candidates taken from an earlier target's search

    def executor(self, fresh: Executor, target: TargetProfile) -> Executor:
        """An executor for ``target``'s search: shared builds first, the rest on the first executor given.

        ``fresh`` is closed unused after the first search: its workers have not started yet.
        """
        if self._executor is None:
            self._executor = fresh
        elif fresh is not self._executor:
            fresh.close()
        return _SharingExecutor(self, self._executor, target)

    def close(self) -> None:
        """Stop the workers and delete the kept models."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._kept.clear()

    def take(self, task: CandidateTask, target: TargetProfile) -> CandidateOutcome | None:
        """The outcome of a kept build ``target`` would build identically, renumbered for ``task``; or None."""
        for kept in self._kept.get(_key(task), []):
            if kept.target.name != target.name and agrees(kept.target, target, kept.facts):
                self.shared[target.name] = self.shared.get(target.name, 0) + 1
                # Built elsewhere: no build time in this search.
                return dataclasses.replace(kept.outcome, index=task.index, model=kept.path.read_bytes(), build_s=0.0)
        return None

    def offer(self, task: CandidateTask, outcome: CandidateOutcome, target: TargetProfile) -> None:
        """Keep ``outcome`` if it built (and later searches may take it)."""
        self.built[target.name] = self.built.get(target.name, 0) + 1
        if not self.keep or outcome.model is None or outcome.error:
            return
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="edgec-shared-builds-"))
        path = self._folder / f"{hashlib.sha256(outcome.model).hexdigest()}.onnx"
        path.write_bytes(outcome.model)
        facts = tuple(f for f in outcome.target_facts if f not in LABELS)
        self._kept.setdefault(_key(task), []).append(
            _Kept(facts, target, dataclasses.replace(outcome, model=None), path))


def _key(task: CandidateTask) -> str:
    """The build's pipeline, options, seed and original model; the target is compared by its facts."""
    options = json.dumps(task.options, sort_keys=True, default=repr)
    text = json.dumps([hashlib.sha256(task.model).hexdigest(), list(task.passes), options, task.seed])
    return hashlib.sha256(text.encode()).hexdigest()


def _builds_candidates(fn: object) -> bool:
    # A function, not an inline ``is``: mypy would narrow build_and_score's own type to ``fn``'s.
    return fn is build_and_score


class _SharingExecutor:
    """Runs candidate builds: kept ones from ``SharedBuilds``, the others on the executor underneath."""

    def __init__(self, shared: SharedBuilds, inner: Executor, target: TargetProfile) -> None:
        self.shared, self.inner, self.target = shared, inner, target

    def map(self, fn: Callable[[T], R], items: Sequence[T], on_result: OnResult | None = None) -> list[R]:
        """``fn`` on every item; for candidate builds, those another target built identically are taken."""
        if not _builds_candidates(fn):
            return self.inner.map(fn, items, on_result)
        tasks = cast(Sequence[CandidateTask], items)  # build_and_score's items
        results: list[Any] = [None] * len(items)
        todo = []
        for i, task in enumerate(tasks):
            results[i] = self.shared.take(task, self.target)
            if results[i] is None:
                todo.append(i)
            elif on_result is not None:
                on_result(i, results[i])
        report = None if on_result is None else (lambda j, r: on_result(todo[j], r))
        built = self.inner.map(build_and_score, [tasks[i] for i in todo], report)
        for i, outcome in zip(todo, built, strict=True):
            results[i] = outcome
            self.shared.offer(tasks[i], outcome, self.target)
        return cast(list[R], results)

    def close(self) -> None:
        """Nothing: the workers serve the next target's search (``SharedBuilds.close`` stops them)."""


class SharedFinals:
    """The final pipelines of a multi-target build (the chosen candidate's, or the plain passes), shared alike.

    A target that agrees on every target fact a pipeline read takes its result (a copy of the model, the same
    pass records). The records quote target names, so here a pipeline that read the name is not shared.
    """

    def __init__(self) -> None:
        """An empty store."""
        self._kept: dict[str, list[tuple[frozenset[str], TargetProfile, PipelineResult, list[tuple[str, bytes]]]]] = {}
        self.shared: set[str] = set()  # targets whose final pipeline was taken

    def take(self, key: str, target: TargetProfile) -> tuple[PipelineResult, list[tuple[str, bytes]]] | None:
        """The kept result of pipeline ``key`` that ``target`` would build identically, and its stages; or None."""
        for facts, built_for, result, stages in self._kept.get(key, []):
            if built_for.name != target.name and agrees(built_for, target, facts):
                self.shared.add(target.name)
                model = onnx.ModelProto()
                model.CopyFrom(result.model)  # the caller's to change: the bundle writer converts it
                return dataclasses.replace(result, model=model), stages
        return None

    def keep(self, key: str, reads: set[str], target: TargetProfile, result: PipelineResult,
             stages: list[tuple[str, bytes]]) -> None:
        """Keep ``target``'s run of pipeline ``key``, which read the target facts ``reads``."""
        self._kept.setdefault(key, []).append((frozenset(reads), target, result, stages))
