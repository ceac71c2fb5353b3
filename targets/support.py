"""Which execution provider of a target runs each node, and which nodes none of them can run.

For EPs whose coverage is ORT's own kernel registry (the CPU EP), a node is runnable exactly when
ORT would run it: a kernel for its domain and op whose version range holds the node's schema
version and whose type constraints accept the node's input and output types; or an op that ORT
rewrites at load time: ``Constant`` (folded into an initializer), an op with an ONNX function body
and no kernel (CastLike, the loss ops, the newest attention ops: expanded), a model-local function
(inlined). Table-based EPs (NNAPI, CoreML) have no type information in their tables, so the
profile's ``dtypes`` bound them. Nodes inside If/Loop/Scan bodies are placed like any other.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
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
# Ops ORT replaces while loading, before any EP is asked for a kernel.
_FOLDED_AT_LOAD = {("ai.onnx", "Constant")}
_ONNX_DOMAINS = {"ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}


@dataclasses.dataclass(frozen=True)
class NodePlacement:
    """Where one node runs: the first EP of the target that can, or None."""

    node: str
    op_type: str
    domain: str
    provider: str | None
    skipped_providers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Kernel:
    first: int
    last: int
    types: dict[str, frozenset[str]]


def _domain(name: str) -> str:
    return _DOMAIN_ALIASES.get(name, name)


@functools.cache
def _cpu_kernels() -> dict[tuple[str, str], list[_Kernel]]:
    kernels: dict[tuple[str, str], list[_Kernel]] = {}
    for d in ort_state.get_all_opkernel_def():
        if d.provider == "CPUExecutionProvider":
            first, last = d.version_range
            types = {k: frozenset(v) for k, v in d.type_constraints.items()}
            kernels.setdefault((_domain(d.domain), d.op_name), []).append(_Kernel(first, last, types))
    return kernels


@functools.cache
def _mobile_table_ops(table: str) -> frozenset[tuple[str, str]]:
    text = (resources.files("onnxruntime.tools.mobile_helpers") / table).read_text(encoding="utf-8")
    found = re.findall(r"^\|([\w.]+):(\w+)\|", text, flags=re.MULTILINE)
    return frozenset((_domain(domain), op) for domain, op in found)


@functools.cache
def _schema(op_type: str, domain: str, opset: int) -> onnx.defs.OpSchema | None:
    if domain not in _ONNX_DOMAINS:
        return None
    try:
        return onnx.defs.get_schema(op_type, opset, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None


def type_string(type_proto: onnx.TypeProto) -> str | None:
    """ORT's name for a value type: 'tensor(float)', 'seq(tensor(int64))', 'optional(...)'; None if unknown."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        elem = type_proto.tensor_type.elem_type
        return f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})" if elem else None
    if kind == "sequence_type":
        inner = type_string(type_proto.sequence_type.elem_type)
        return f"seq({inner})" if inner else None
    if kind == "optional_type":
        inner = type_string(type_proto.optional_type.elem_type)
        return f"optional({inner})" if inner else None
    return None


@dataclasses.dataclass(frozen=True)
class _NodeInfo:
    node: onnx.NodeProto
    name: str
    domain: str
    opset: int
    inputs: tuple[str | None, ...]  # type strings, None where unknown or the input is omitted
    outputs: tuple[str | None, ...]


def _formal_types(params: list, actual: tuple[str | None, ...]) -> Iterator[tuple[str, str]]:
    """(type constraint or concrete type, actual type) for each typed actual argument."""
    if not params:
        return
    for i, t in enumerate(actual):
        param = params[min(i, len(params) - 1)]
        if i >= len(params) and param.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return
        if t is not None:
            yield param.type_str, t


def _kernel_fits(kernel: _Kernel, since: int, schema: onnx.defs.OpSchema | None, info: _NodeInfo) -> bool:
    if not kernel.first <= since <= kernel.last:
        return False
    if schema is None:  # no formal parameters to map the constraints onto: the op and version decide
        return True
    pairs = [*_formal_types(schema.inputs, info.inputs), *_formal_types(schema.outputs, info.outputs)]
    return all(actual in kernel.types[formal] for formal, actual in pairs if formal in kernel.types)


def cpu_runs(info: _NodeInfo, local_functions: frozenset[tuple[str, str]]) -> bool:
    """Whether ORT's CPU EP runs this node, directly or after rewriting it at load."""
    key = (info.domain, info.node.op_type)
    if key in _FOLDED_AT_LOAD or key in local_functions:
        return True
    schema = _schema(info.node.op_type, info.domain, info.opset)
    since = schema.since_version if schema is not None else info.opset
    kernels = _cpu_kernels().get(key, [])
    if any(_kernel_fits(k, since, schema, info) for k in kernels):
        return True
    # ORT casts float16 to float around a CPU node that has only a float kernel (InsertCastTransformer).
    as_float = dataclasses.replace(info, inputs=tuple(map(_fp16_as_float, info.inputs)),
                                   outputs=tuple(map(_fp16_as_float, info.outputs)))
    if as_float != info and any(_kernel_fits(k, since, schema, as_float) for k in kernels):
        return True
    return schema is not None and (schema.has_function or schema.has_context_dependent_function)


def _fp16_as_float(type_str: str | None) -> str | None:
    return "tensor(float)" if type_str == "tensor(float16)" else type_str


def _table_runs(ep: ExecutionProviderSpec, info: _NodeInfo) -> bool:
    domain, op_type = info.domain, info.node.op_type
    if domain == "com.microsoft" and op_type in ep.contrib_ops:
        covered = True
    elif ep.ops_source in _TABLES:
        covered = (domain, op_type) in _mobile_table_ops(_TABLES[ep.ops_source])
    elif ep.ops_source == "onnx-standard":
        covered = domain == "ai.onnx" and onnx.defs.has(op_type)
    else:
        raise ValueError(f"unknown ops_source {ep.ops_source!r}")
    dtypes = {_dtype_name(t) for t in info.inputs if t and t.startswith("tensor(")} - _ALWAYS_OK_DTYPES
    return covered and dtypes <= set(ep.dtypes) | {"float32"}


def _runs_on(ep: ExecutionProviderSpec, info: _NodeInfo, local_functions: frozenset[tuple[str, str]]) -> bool:
    if info.node.op_type in ep.exclude_ops:
        return False
    if ep.ops_source == "ort-kernel-registry":
        if info.domain == "com.microsoft" and info.node.op_type in ep.contrib_ops:
            return True
        return cpu_runs(info, local_functions)
    return _table_runs(ep, info)


def _dtype_name(type_str: str) -> str:
    name = type_str[len("tensor("):-1]
    return {"float": "float32", "double": "float64"}.get(name, name)


def _value_types(graph: onnx.GraphProto, types: dict[str, str]) -> None:
    """Type strings of every named value in ``graph`` and its subgraphs."""
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = type_string(vi.type)
        if t:
            types[vi.name] = t
    for init in graph.initializer:
        types[init.name] = f"tensor({onnx.TensorProto.DataType.Name(init.data_type).lower()})"
    for node in graph.node:
        for _, sub in _subgraphs(node):
            _value_types(sub, types)


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute name, body) of each subgraph a node holds (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from ((attr.name, g) for g in attr.graphs)


def walk_nodes(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, onnx.NodeProto]]:
    """(display name, node) for every node, subgraph bodies included ('loop/body/add')."""
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        yield name, node
        for attr_name, sub in _subgraphs(node):
            yield from walk_nodes(sub, f"{name}/{attr_name}/")


def _node_infos(model: onnx.ModelProto) -> list[_NodeInfo]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a best effort; types it misses are not checked
        inferred = model
    types: dict[str, str] = {}
    _value_types(inferred.graph, types)
    opsets = {_domain(o.domain): o.version for o in model.opset_import}
    infos = []
    for name, node in walk_nodes(inferred.graph):
        domain = _domain(node.domain)
        infos.append(_NodeInfo(node, name, domain, opsets.get(domain, 1),
                               tuple(types.get(i) if i else None for i in node.input),
                               tuple(types.get(o) if o else None for o in node.output)))
    return infos


def place_nodes(model: onnx.ModelProto, target: TargetProfile) -> list[NodePlacement]:
    """Assign each node (subgraph bodies included) to the first EP of ``target`` that runs it."""
    local_functions = frozenset((_domain(f.domain), f.name) for f in model.functions)
    placements = []
    for info in _node_infos(model):
        provider, skipped = None, []
        for ep in target.execution_providers:
            if _runs_on(ep, info, local_functions):
                provider = ep.name
                break
            skipped.append(ep.name)
        placements.append(NodePlacement(info.name, info.node.op_type, info.domain, provider, tuple(skipped)))
    return placements


def unrunnable_nodes(placements: list[NodePlacement]) -> list[NodePlacement]:
    """Nodes that no EP of the target can run."""
    return [p for p in placements if p.provider is None]


def fallback_nodes(placements: list[NodePlacement], target: TargetProfile) -> list[NodePlacement]:
    """Nodes that run, but not on the target's first (preferred) EP."""
    primary = target.ep_names[0]
    return [p for p in placements if p.provider not in (None, primary)]
