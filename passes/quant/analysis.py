""""Why isn't it faster": read ORT's optimized graph of a quantized model and name the slow spots per node.

ORT rewrites DQ -> op -> Q groups into QLinear* kernels while it builds a session. What it could not
fuse stays visible in the graph it writes to ``optimized_model_filepath``:
  - QuantizeLinear / DequantizeLinear left standing: a float island, with the float op it serves;
  - ConvInteger / MatMulInteger: dynamic-quantization fallbacks (ConvInteger is several times slower
    than fp32: bench/RESULTS.md, Quantization);
  - Transpose / ReorderInput / ReorderOutput that ORT added: layout changes between NHWC int8
    kernels, NCHWc float kernels and NCHW float ops.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import onnx
import onnxruntime as ort

from edgec.passes.quant.common import consumers, workdir
from edgec.runtime.session import session_options

SLOW_FALLBACKS = {"ConvInteger": "dynamic int8 Conv: no fused kernel, slower than fp32",
                  "MatMulInteger": "integer MatMul without fused rescale"}
LAYOUT_OPS = {"Transpose", "ReorderInput", "ReorderOutput"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One node of ORT's optimized graph that costs time a fully fused int8 graph would not."""

    node: str
    op_type: str
    kind: str  # "unfused-qdq" | "slow-fallback" | "layout"
    detail: str


@dataclasses.dataclass
class SpeedReport:
    """Findings plus the op histogram of the optimized graph."""

    findings: list[Finding]
    optimized_ops: dict[str, int]

    def counts(self) -> dict[str, int]:
        """How many findings of each kind."""
        return dict(collections.Counter(f.kind for f in self.findings))

    def float_ops(self) -> dict[str, int]:
        """Op types that sit in float between a DequantizeLinear and a QuantizeLinear."""
        return dict(collections.Counter(f.detail.removeprefix("feeds float ") for f in self.findings
                                        if f.kind == "unfused-qdq" and f.op_type == "DequantizeLinear"
                                        and f.detail.startswith("feeds float")))

    def to_json(self) -> dict[str, Any]:
        """Summary for a pass record: counts, float ops, and the first 50 findings."""
        return {"counts": self.counts(), "float_ops_between_qdq": self.float_ops(),
                "findings": [dataclasses.asdict(f) for f in self.findings[:50]]}


def optimized_graph(model: bytes, level: str = "all") -> onnx.ModelProto:
    """The graph ORT's CPU EP actually runs for ``model`` (session option optimized_model_filepath)."""
    with workdir() as folder:
        path = folder / "optimized.onnx"
        opts = session_options(level, 1, optimized_path=str(path))
        ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def _qdq_finding(node: onnx.NodeProto, users: dict[str, list[onnx.NodeProto]],
                 producers: dict[str, onnx.NodeProto]) -> Finding:
    if node.op_type == "DequantizeLinear":
        after = sorted({u.op_type for u in users.get(node.output[0], [])}) or ["graph output"]
        detail = f"feeds float {'/'.join(after)}"
    else:
        before = producers.get(node.input[0])
        detail = f"quantizes the output of float {before.op_type if before else 'graph input'}"
    return Finding(node.name, node.op_type, "unfused-qdq", detail)


def explain(model: bytes, original: onnx.ModelProto | None = None, level: str = "all") -> SpeedReport:
    """Per-node report of what keeps a quantized model from running int8 end to end on ORT CPU."""
    graph = optimized_graph(model, level).graph
    users = consumers(graph)
    producers = {out: n for n in graph.node for out in n.output}
    own_transposes = {n.name for n in original.graph.node if n.op_type == "Transpose"} if original else set()
    findings = []
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            findings.append(_qdq_finding(node, users, producers))
        elif node.op_type in SLOW_FALLBACKS:
            findings.append(Finding(node.name, node.op_type, "slow-fallback", SLOW_FALLBACKS[node.op_type]))
        elif node.op_type in LAYOUT_OPS and node.name not in own_transposes:
            src = producers.get(node.input[0])
            findings.append(Finding(node.name, node.op_type, "layout",
                                    f"added by ORT after {src.op_type if src else 'graph input'}"))
    ops = collections.Counter(n.op_type for n in graph.node)
    return SpeedReport(findings, dict(ops.most_common()))
