"""Latency percentiles of a model in ONNX Runtime, and its slowest nodes from ORT's own profiler."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from edgec.core import progress
from edgec.core.errors import ConfigError, ModelLoadError
from edgec.runtime.session import session_options

log = logging.getLogger(__name__)

# Node timings need far fewer runs than percentiles; profiling each run costs a trace event per node.
PROFILED_RUNS = 10


@dataclasses.dataclass(frozen=True)
class NodeTime:
    """One node's kernel time per run (mean over profiled runs) and its share of all kernel time."""

    name: str
    op_type: str
    total_ms: float
    share: float
    provider: str


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """Wall-clock latency of ``session.run`` over ``runs`` timed calls, and the ``top`` slowest nodes."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    warmup: int
    threads: int
    top_nodes: list[NodeTime]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, for manifests' metrics and ``--json`` output."""
        return dataclasses.asdict(self)


def _session(model: bytes | str | os.PathLike[str], level: str, threads: int,
             providers: Sequence[str] | None, prefix: str | None = None) -> ort.InferenceSession:
    """A session on a .onnx or .ort file or bytes (ORT tells the formats apart itself)."""
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, session_options(level, threads, profile_prefix=prefix),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:
        where = "model bytes" if isinstance(model, bytes) else os.fspath(model)
        raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {exc}") from exc


def _latencies(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], runs: int,
               warmup: int) -> np.ndarray:
    """Milliseconds per ``session.run`` call, after ``warmup`` untimed calls."""
    for _ in progress.track(range(warmup), "warm-up runs"):
        session.run(None, dict(feeds))
    times = np.empty(runs)
    with progress.task("timed runs", total=runs) as step:
        for i in range(runs):
            start = time.perf_counter()
            session.run(None, dict(feeds))
            times[i] = (time.perf_counter() - start) * 1e3
            step()  # outside the timed interval
    return times


def parse_trace(events: list[dict[str, Any]], top: int) -> list[NodeTime]:
    """Aggregate ORT trace ``Node`` kernel events per node; slowest first."""
    runs = max(1, sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"))
    totals: dict[tuple[str, str, str], float] = collections.defaultdict(float)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        op_type = str(args.get("op_name", "?"))
        node = name.removesuffix("_kernel_time") or f"{op_type}#{args.get('node_index', '?')}"
        totals[(node, op_type, str(args.get("provider", "?")))] += float(event.get("dur", 0)) / 1e3
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return [NodeTime(node, op, ms / runs, ms / grand, provider) for (node, op, provider), ms in ranked]


def _top_nodes(model: bytes | str | os.PathLike[str], feeds: Mapping[str, np.ndarray], level: str,
               threads: int, providers: Sequence[str] | None, top: int) -> list[NodeTime]:
    """Run a separate profiling session a few times; its trace file is deleted afterwards."""
    trace_dir = pathlib.Path(tempfile.mkdtemp(prefix="edgec-profile-"))
    try:
        session = _session(model, level, threads, providers, prefix=os.fspath(trace_dir / "ort"))
        # The first run warms up; it is excluded below by counting model_run events.
        for _ in progress.track(range(1 + PROFILED_RUNS), "profiled runs"):
            session.run(None, dict(feeds))
        trace = pathlib.Path(session.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        first_end = runs[0]["ts"] + runs[0]["dur"] if len(runs) > 1 else -1
        return parse_trace([e for e in events if e.get("ts", 0) > first_end], top)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def profile_model(model: bytes | str | os.PathLike[str], feeds: Mapping[str, np.ndarray], *, runs: int = 100,
                  warmup: int = 10, threads: int = 1, level: str = "all",
                  providers: Sequence[str] | None = None, top: int = 10) -> ProfileResult:
    """Time ``runs`` calls of a .onnx/.ort model (path or bytes) on ``feeds`` and list its ``top`` nodes."""
    if runs < 1 or warmup < 0 or top < 0:
        raise ConfigError(f"profile: runs must be >= 1, warmup and top >= 0 (got runs={runs}, "
                          f"warmup={warmup}, top={top})")
    session = _session(model, level, threads, providers)
    times = _latencies(session, feeds, runs, warmup)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    nodes = _top_nodes(model, feeds, level, threads, providers, top) if top else []
    log.debug("profiled %d runs: p50 %.3f ms", runs, p50)
    return ProfileResult(float(p50), float(p90), float(p99), float(times.mean()), runs, warmup, threads,
                         nodes)
