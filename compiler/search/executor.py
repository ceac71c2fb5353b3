"""Run candidate builds and evaluations in parallel: a local process pool, or a dask cluster.

The default needs no extra dependency (``concurrent.futures``); ``--scheduler tcp://HOST:PORT``
sends the same tasks to a dask.distributed cluster (the ``dist`` extra). Tasks must be picklable
module-level functions with plain-data arguments (model bytes, config dicts): the executor moves
them between processes, never user files. Results come back in submission order; ``on_result``
sees each one as it completes, for progress (done, best so far, ETA).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from edgec.core.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]


class Executor(Protocol):
    """Maps a function over items somewhere else; results in input order."""

    def map(self, fn: Callable[[T], R], items: Sequence[T], on_result: OnResult | None = None) -> list[R]:
        """Run ``fn`` on every item."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


class LocalExecutor:
    """A process pool. Spawned workers: forking a process that holds ORT/torch thread pools can hang."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable[[T], R], items: Sequence[T], on_result: OnResult | None = None) -> list[R]:
        """Run ``fn`` on every item in the pool."""
        futures = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        return _collect(concurrent.futures.as_completed(futures), futures, len(items), on_result)

    def close(self) -> None:
        """Shut the pool down."""
        self._pool.shutdown(cancel_futures=True)


class DaskExecutor:
    """Tasks on a dask.distributed cluster reached at ``address`` (``tcp://HOST:PORT``)."""

    def __init__(self, address: str, connect_timeout_s: float = 10.0) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs the 'dist' extra: pip install 'edgec[dist]'") from None
        try:
            self._client = Client(address, timeout=f"{connect_timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {address}: cannot reach the dask scheduler ({exc})") from None

    def map(self, fn: Callable[[T], R], items: Sequence[T], on_result: OnResult | None = None) -> list[R]:
        """Run ``fn`` on every item on the cluster."""
        from distributed import as_completed

        # pure=False: identical items (two candidates with the same knobs) still run, each on its own.
        futures = self._client.map(fn, list(items), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(items)
        for future in as_completed(futures):
            i = index[future.key]
            results[i] = future.result()
            if on_result:
                on_result(i, results[i])
        return results

    def close(self) -> None:
        """Disconnect from the cluster (the cluster itself keeps running)."""
        self._client.close()


def _collect(done: Any, futures: dict[Any, int], count: int, on_result: OnResult | None) -> list[Any]:
    results: list[Any] = [None] * count
    for future in done:
        i = futures[future]
        results[i] = future.result()
        if on_result:
            on_result(i, results[i])
    return results


def make_executor(scheduler: str | None = None, workers: int = 2, connect_timeout_s: float = 10.0) -> Executor:
    """A dask executor when ``scheduler`` is given (``tcp://HOST:PORT``), else a local process pool."""
    if scheduler is None:
        return LocalExecutor(workers)
    if not scheduler.startswith(("tcp://", "tls://")):
        raise ConfigError(f"--scheduler {scheduler!r}: expected tcp://HOST:PORT")
    return DaskExecutor(scheduler, connect_timeout_s)
