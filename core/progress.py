"""Progress of long work (M of N done) for whoever shows it; without a reporter installed, every call does nothing.

Library code says what it counts and nothing about how it is shown::

    with progress.task("sensitivity ranking", total=len(nodes)) as step:
        for node in nodes:
            ...
            step()

The CLI installs a reporter that draws bars (``edgec.compiler.report.progress``); tests install a ``Recorder``.
The reporter lives in a context variable, so a worker process or a thread that did not inherit the context
reports nothing. A task with ``total=0`` (nothing to do) is not shown.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterable, Iterator, Sized
from typing import Protocol, TypeVar, cast

T = TypeVar("T")


class Reporter(Protocol):
    """What shows tasks: started with a label and a total (None: unknown), updated, then stopped."""

    def start(self, label: str, total: float | None) -> object:
        """Begin showing a task; returns the handle later calls pass back."""
        ...

    def update(self, handle: object, *, advance: float = 0, completed: float | None = None,
               total: float | None = None, label: str | None = None) -> None:
        """Move a task on by ``advance`` or to ``completed``; change its total or label."""
        ...

    def stop(self, handle: object) -> None:
        """The task is over (done, or left by an error)."""
        ...


_REPORTER: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("edgec_progress", default=None)


class Task:
    """One task being reported; calling it advances it by one (or ``n``). Does nothing without a reporter."""

    def __init__(self, reporter: Reporter | None = None, handle: object = None) -> None:
        self._reporter = reporter
        self._handle = handle

    def __call__(self, n: float = 1) -> None:
        """Advance the task by ``n``."""
        if self._reporter is not None:
            self._reporter.update(self._handle, advance=n)

    def update(self, *, completed: float | None = None, total: float | None = None, label: str | None = None) -> None:
        """Set how much is done, the total, or the label (e.g. to show the best result so far)."""
        if self._reporter is not None:
            self._reporter.update(self._handle, completed=completed, total=total, label=label)

    def close(self) -> None:
        """Stop reporting the task; later calls do nothing."""
        if self._reporter is not None:
            reporter, self._reporter = self._reporter, None
            reporter.stop(self._handle)


def start(label: str, total: float | None = None) -> Task:
    """Begin a task on the installed reporter (a no-op task when none is, or when ``total`` is 0); ``close`` it."""
    reporter = _REPORTER.get()
    if reporter is None or total == 0:
        return Task()
    return Task(reporter, reporter.start(label, total))


@contextlib.contextmanager
def task(label: str, total: float | None = None) -> Iterator[Task]:
    """A task for the length of the block; ``total`` None for work whose size is not known."""
    current = start(label, total)
    try:
        yield current
    finally:
        current.close()


def track(items: Iterable[T], label: str, total: float | None = None) -> Iterator[T]:
    """``items`` one by one, advancing a task after each; ``total`` defaults to ``len(items)`` where it has one."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with task(label, total) as step:
        for item in items:
            yield item
            step()


def active() -> bool:
    """Whether a reporter is installed here."""
    return _REPORTER.get() is not None


@contextlib.contextmanager
def installed(reporter: Reporter) -> Iterator[Reporter]:
    """Report every task started in the block (in this context) to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield reporter
    finally:
        _REPORTER.reset(token)


@dataclasses.dataclass
class RecordedTask:
    """What a ``Recorder`` saw of one task: its labels in order, its last total, how far it got, whether it ended."""

    labels: list[str]
    total: float | None
    completed: float = 0
    stopped: bool = False
    depth: int = 0  # tasks open around it when it started


class Recorder:
    """A reporter that keeps what it is told, for tests and logs."""

    def __init__(self) -> None:
        self.tasks: list[RecordedTask] = []
        self._open = 0

    def start(self, label: str, total: float | None) -> object:
        """Record a new task; its handle is its record."""
        rec = RecordedTask([label], total, depth=self._open)
        self.tasks.append(rec)
        self._open += 1
        return rec

    def update(self, handle: object, *, advance: float = 0, completed: float | None = None,
               total: float | None = None, label: str | None = None) -> None:
        """Record the move, the new total and the new label."""
        rec = cast(RecordedTask, handle)
        rec.completed = (completed if completed is not None else rec.completed) + advance
        rec.total = total if total is not None else rec.total
        if label is not None and label != rec.labels[-1]:
            rec.labels.append(label)

    def stop(self, handle: object) -> None:
        """Mark the task ended."""
        cast(RecordedTask, handle).stopped = True
        self._open -= 1

    def named(self, prefix: str) -> list[RecordedTask]:
        """The tasks whose first label starts with ``prefix``."""
        return [t for t in self.tasks if t.labels[0].startswith(prefix)]
