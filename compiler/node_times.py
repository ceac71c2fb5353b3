"""Where the time goes per node, before and after the passes: ``metrics.node_times`` of a build's manifest.

A few runs of ORT's profiler on the original and on the final model (``runtime.profile``), on this host, with
the target's optimization level, thread count and those of its EPs this onnxruntime has. Each side keeps its
slowest nodes with the EP ORT assigned them, and every op type's total, so the report can say where the time
went. A failure records why instead of failing the build: the figures are for people, not for the bundle.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from typing import Any

import onnx

from edgec.runtime.profile import PROFILED_RUNS, NodeTime, profile_model
from edgec.runtime.session import host_providers
from edgec.targets.profile import TargetProfile

log = logging.getLogger(__name__)

TOP_NODES = 15
# Every node is kept by the profiler so op-type totals cover the whole model; only TOP_NODES are stored.
_ALL = 1 << 30


def _op_totals(nodes: list[NodeTime]) -> list[dict[str, Any]]:
    """Kernel time per op type (ms per run, share of all kernel time), slowest first."""
    ms: dict[str, float] = collections.defaultdict(float)
    share: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for node in nodes:
        ms[node.op_type] += node.total_ms
        share[node.op_type] += node.share
        count[node.op_type] += 1
    ranked = sorted(ms, key=lambda op: ms[op], reverse=True)
    return [{"op_type": op, "nodes": count[op], "total_ms": ms[op], "share": share[op]} for op in ranked]


def _provider_shares(nodes: list[NodeTime]) -> dict[str, float]:
    """Share of kernel time per EP."""
    out: dict[str, float] = collections.defaultdict(float)
    for node in nodes:
        out[node.provider] += node.share
    return dict(out)


def _side(model: bytes, feeds: Mapping[str, Any], target: TargetProfile, providers: list[str]) -> dict[str, Any]:
    """One model's profile: its slowest nodes, op-type totals and each EP's share of the kernel time."""
    result = profile_model(model, feeds, runs=1, warmup=0, threads=target.intra_op_num_threads,
                           level=target.graph_optimization_level, providers=providers, top=_ALL)
    nodes = result.top_nodes
    return {"kernel_ms": sum(n.total_ms for n in nodes), "nodes_timed": len(nodes),
            "nodes": [{"name": n.name, "op_type": n.op_type, "provider": n.provider, "total_ms": n.total_ms,
                       "share": n.share} for n in nodes[:TOP_NODES]],
            "by_op": _op_totals(nodes)[:TOP_NODES], "by_provider": _provider_shares(nodes)}


def node_times(original: onnx.ModelProto, final: onnx.ModelProto, target: TargetProfile,
               feeds: Mapping[str, Any] | None) -> dict[str, Any]:
    """``metrics.node_times``: ``before`` and ``after`` per-node kernel times, or ``error`` saying why not."""
    providers = host_providers(target)
    out: dict[str, Any] = {"measured_on": "this host", "providers": providers,
                           "target_providers": list(target.ep_names), "profiled_runs": PROFILED_RUNS,
                           "level": target.graph_optimization_level, "threads": target.intra_op_num_threads}
    if feeds is None:
        return {**out, "error": "no calibration sample to run the models on"}
    try:
        out["before"] = _side(original.SerializeToString(), feeds, target, providers)
        out["after"] = _side(final.SerializeToString(), feeds, target, providers)
    except Exception as exc:  # ORT's own error types: the page says why; the bundle is unaffected
        log.warning("per-node profile failed: %s", exc)
        return {**out, "error": " ".join(str(exc).split()) or type(exc).__name__}
    return out
