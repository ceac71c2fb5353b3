"""Suite-wide options and helpers: ``--timing-chaos SEED`` runs the tests on a simulated noisy host.

A test must not assert a conclusion that the timing noise of a shared 2-core host can flip (timing
claims belong in bench/). To find the ones that do without waiting for an unlucky CI run, this
option replaces the clock of every module that times models for a decision (the search's
``measure_latencies``, the interleaved timer behind quantize-int8's placement race, the profiler)
with one that stretches each measured interval by a random factor: per-call jitter, bursts of 3x,
and a load level that drifts between calls. A test that passes under several seeds of it does not
depend on which model happened to time faster. ``make test-timing-chaos`` runs the timing-sensitive
tests under three seeds.
"""

from __future__ import annotations

import math
import random
import time

import pytest

# The helpers every test shares (outputs, assert_outputs_close, build_with_config) live in tests/helpers.py;
# tests import them with `from helpers import ...` (pytest puts this folder on sys.path with this conftest).
# Imported here too so that a broken helper fails the collection once, up front.
from helpers import assert_outputs_close, build_with_config, outputs  # noqa: F401

# Modules that time models and act (or report) on the result; each does ``import time``.
TIMED_MODULES = ("edgec.runtime.timing", "edgec.runtime.profile")


class NoisyClock:
    """``time``'s stand-in: ``perf_counter`` runs at a random, drifting speed."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._last_real = time.perf_counter()
        self._fake = self._last_real
        self._load = 1.0  # slow drift: other load on the host that comes and goes

    def perf_counter(self) -> float:
        now = time.perf_counter()
        real, self._last_real = now - self._last_real, now
        self._load = min(4.0, max(0.5, self._load * math.exp(self._rng.gauss(0.0, 0.05))))
        burst = 3.0 if self._rng.random() < 0.1 else 1.0
        self._fake += real * self._load * burst * math.exp(self._rng.gauss(0.0, 0.3))
        return self._fake

    def __getattr__(self, name: str):  # everything else (sleep, time, ...) is the real module's
        return getattr(time, name)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--timing-chaos", type=int, default=None, metavar="SEED",
                     help="time models with a randomly stretched clock (a simulated noisy host)")


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--timing-chaos")
    if seed is None:
        return
    import importlib

    clock = NoisyClock(seed)
    for name in TIMED_MODULES:
        importlib.import_module(name).time = clock
