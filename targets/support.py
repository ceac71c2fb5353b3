"""Which execution provider of a target runs each node, and which nodes none of them can run."""

from __future__ import annotations

import dataclasses
import functools
import re
from importlib import resources

import onnx
import onnxruntime.capi._pybind_state as ort_state

from edgec.targets.profile import ExecutionProviderSpec, TargetProfile

_TABLES = {
    "nnapi-table": "nnapi_supported_ops.md",
    "coreml-mlprogram-table": "coreml_supported_mlprogram_ops.md",
    "coreml-neuralnetwork-table": "coreml_supported_neuralnetwork_ops.md",
}
# Index and shape tensors run on every EP (they stay on CPU or are folded); only data dtypes matter.
_ALWAYS_OK_DTYPES = {"int64", "int32", "bool"}
_DOMAIN_ALIASES = {"": "ai.onnx", "ai.onnx": "ai.onnx"}


@dataclasses.dataclass(frozen=True)
class NodePlacement:
    """Where one node runs: the first EP of the target that can, or None."""

    node: str
    op_type: str
    domain: str
    provider: str | None
    skipped_providers: tuple[str, ...]


def _domain(name: str) -> str:
    return _DOMAIN_ALIASES.get(name, name)


@functools.cache
def _ort_kernel_ops() -> frozenset[tuple[str, str]]:
    defs = ort_state.get_all_opkernel_def()
    return frozenset((_domain(d.domain), d.op_name) for d in defs if d.provider == "CPUExecutionProvider")


@functools.cache
def _mobile_table_ops(table: str) -> frozenset[tuple[str, str]]:
    text = (resources.files("onnxruntime.tools.mobile_helpers") / table).read_text(encoding="utf-8")
    found = re.findall(r"^\|([\w.]+):(\w+)\|", text, flags=re.MULTILINE)
    return frozenset((_domain(domain), op) for domain, op in found)


def _supports_op(ep: ExecutionProviderSpec, domain: str, op_type: str) -> bool:
    if op_type in ep.exclude_ops:
        return False
    if domain == "com.microsoft" and op_type in ep.contrib_ops:
        return True
    if ep.ops_source == "ort-kernel-registry":
        return (domain, op_type) in _ort_kernel_ops()
    if ep.ops_source in _TABLES:
        return (domain, op_type) in _mobile_table_ops(_TABLES[ep.ops_source])
    if ep.ops_source == "onnx-standard":
        return domain == "ai.onnx" and onnx.defs.has(op_type)
    raise ValueError(f"unknown ops_source {ep.ops_source!r}")


def _dtype_name(elem_type: int) -> str:
    name = onnx.TensorProto.DataType.Name(elem_type).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def _value_dtypes(graph: onnx.GraphProto) -> dict[str, str]:
    dtypes = {vi.name: _dtype_name(vi.type.tensor_type.elem_type)
              for vi in [*graph.input, *graph.value_info, *graph.output] if vi.type.tensor_type.elem_type}
    dtypes.update({init.name: _dtype_name(init.data_type) for init in graph.initializer})
    return dtypes


def place_nodes(model: onnx.ModelProto, target: TargetProfile) -> list[NodePlacement]:
    """Assign each main-graph node to the first EP of ``target`` that has its op and dtypes."""
    inferred = onnx.shape_inference.infer_shapes(model)
    dtypes = _value_dtypes(inferred.graph)
    placements = []
    for i, node in enumerate(model.graph.node):
        domain = _domain(node.domain)
        node_dtypes = {dtypes[n] for n in node.input if n in dtypes} - _ALWAYS_OK_DTYPES
        provider, skipped = None, []
        for ep in target.execution_providers:
            if _supports_op(ep, domain, node.op_type) and node_dtypes <= set(ep.dtypes) | {"float32"}:
                provider = ep.name
                break
            skipped.append(ep.name)
        name = node.name or f"{node.op_type}_{i}"
        placements.append(NodePlacement(name, node.op_type, domain, provider, tuple(skipped)))
    return placements


def unrunnable_nodes(placements: list[NodePlacement]) -> list[NodePlacement]:
    """Nodes that no EP of the target can run."""
    return [p for p in placements if p.provider is None]


def fallback_nodes(placements: list[NodePlacement], target: TargetProfile) -> list[NodePlacement]:
    """Nodes that run, but not on the target's first (preferred) EP."""
    primary = target.ep_names[0]
    return [p for p in placements if p.provider not in (None, primary)]
