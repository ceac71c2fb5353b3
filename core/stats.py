"""Static figures of a model: node count, op histogram, parameters, bytes, FLOPs per node."""

from __future__ import annotations

import collections
import dataclasses
import math

import onnx
from onnx import helper, shape_inference


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """FLOPs (multiply-adds count as 2) of one node, from inferred shapes."""

    name: str
    op_type: str
    flops: int


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Whole-model figures that pass records compare before and after."""

    nodes: int
    params: int
    flops: int
    size_bytes: int
    op_histogram: dict[str, int]
    node_costs: tuple[NodeCost, ...]

    def summary(self) -> dict[str, int]:
        """The four figures a pass record keeps."""
        return {"nodes": self.nodes, "params": self.params, "flops": self.flops, "bytes": self.size_bytes}


def value_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
                 ) -> dict[str, list[int | None]]:
    """Static shapes of every value and initializer, subgraphs included (None for unknown dims).

    ``input_shapes`` (a calibration sample's) stand in for the inputs' symbolic dims, on a copy: a
    detector exported with dynamic height and width has FLOPs at the size it is run at.
    """
    return {name: dims for name, (dims, _) in value_types(model, input_shapes).items()}


def value_types(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
                ) -> dict[str, tuple[list[int | None], int]]:
    """``value_shapes`` with each value's ONNX element type (0 when unknown), from the same inference."""
    if input_shapes:
        model = _with_input_shapes(model, input_shapes)
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a best effort for statistics only
        inferred = model
    types = _collect_types(inferred)
    if _contrib_shapes_missing(model, types):
        symbolic = _ort_symbolic_shapes(model)
        for name, (dims, elem) in (_collect_types(symbolic) if symbolic is not None else {}).items():
            known = types.get(name, ([], 0))[0]
            if dims and (not known or None in known):
                types[name] = (dims, elem or types.get(name, ([], 0))[1])
    return types


def _collect_types(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], int]]:
    types: dict[str, tuple[list[int | None], int]] = {}
    for graph in _all_graphs(model.graph):
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            tensor = vi.type.tensor_type
            types[vi.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim],
                              tensor.elem_type)
        for init in graph.initializer:
            types[init.name] = (list(init.dims), init.data_type)
    return types


def _contrib_shapes_missing(model: onnx.ModelProto, types: dict[str, tuple[list[int | None], int]]) -> bool:
    """A main-graph node of ORT's own domain whose outputs ONNX's inference left without a shape.

    ONNX's inference stops at ops it does not know (QuickGelu, SkipLayerNormalization, ... that ORT's fusions
    write), and every value after them loses its shape: FLOPs and the latency model's prices would read 0.
    """
    return any(node.domain == "com.microsoft" and any(o and not types.get(o, ([], 0))[0] for o in node.output)
               for node in model.graph.node)


def _ort_symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with shapes from ORT's symbolic shape inference, which knows ORT's contrib ops; None if it fails.

    Used only where ONNX's own inference cannot pass a contrib op: ONNX Runtime maintains it for its own ops.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

        if (get_opset(model) or 0) < 7:
            return None
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        # SymbolicShapeInference.infer_shapes, less its last step: where some shape stays unknown it saves
        # sym_shape_infer_temp.onnx into the current folder, a user's, before raising. Partial shapes do here.
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(copy)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except Exception:  # noqa: BLE001 - a best effort, as above; its failures are asserts and KeyErrors
        return None


def _with_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for vi in copy.graph.input:
        shape = input_shapes.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if shape is None or len(dims) != len(shape):
            continue
        for dim, size in zip(dims, shape, strict=True):
            dim.dim_value = int(size)
    del copy.graph.value_info[:]  # inferred again from the new input shapes
    return copy


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _all_graphs(sub)


def _numel(shape: list[int | None] | None) -> int:
    if shape is None:
        return 0
    dims = [d for d in shape if d is not None]
    return math.prod(dims) if len(dims) == len(shape) else 0


def node_flops(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> int:
    """FLOPs of one node given value shapes (multiply-adds count 2; other ops one per output element)."""
    out = shapes.get(node.output[0]) if node.output else None
    inputs = [shapes.get(name) for name in node.input]
    op = node.op_type
    if op in ("If", "Loop", "Scan"):
        return 0  # their bodies' nodes are counted (model_stats)
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv") and len(inputs) > 1:
        w = inputs[1] if op != "QLinearConv" else shapes.get(node.input[3])
        if w is None or out is None:
            return 0
        # Each output element takes (C_in / groups) * kH * kW multiply-adds: exactly w's per-filter size.
        return 2 * _numel(out) * _numel(w[1:])
    if op == "ConvTranspose" and len(inputs) > 1 and inputs[0] and inputs[1]:
        return 2 * _numel(inputs[0]) * _numel(inputs[1][1:])
    if op in ("MatMul", "MatMulInteger", "FusedMatMul", "Gemm", "MatMulNBits") and out and inputs[0]:
        k = inputs[0][-1] if op != "Gemm" or not _attr(node, "transA") else inputs[0][0]
        return 2 * _numel(out) * (k or 0)
    if op in ("Attention", "MultiHeadAttention") and inputs[0] and len(inputs[0]) == 3:
        b, s, h = inputs[0]
        if b is None or s is None or h is None:
            return 0
        proj = 2 * b * s * h * 3 * h if op == "Attention" else 0
        return proj + 4 * b * s * s * h
    return _numel(out)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    # From dims and dtype, so tensors kept in external data need not be read.
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    bits: dict[int, int] = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4}
    return math.prod(tensor.dims) * bits.get(tensor.data_type, itemsize * 8) // 8


def _attr(node: onnx.NodeProto, name: str) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return 0


def _graph_costs(graph: onnx.GraphProto, shapes: dict[str, list[int | None]], prefix: str = "") -> list[NodeCost]:
    """Each node's FLOPs, body nodes listed under their owner's name ('loop/body/matmul').

    An If costs its costlier branch and a Loop or Scan one pass of its body (trip counts are data).
    """
    costs = []
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        costs.append(NodeCost(name, node.op_type, node_flops(node, shapes)))
        bodies = [(a.name, a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        per_body = [_graph_costs(g, shapes, f"{name}/{attr}/") for attr, g in bodies]
        if node.op_type == "If" and per_body:
            costs += max(per_body, key=lambda c: sum(x.flops for x in c))
        else:
            costs += [c for body in per_body for c in body]
    return costs


def model_stats(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ModelStats:
    """Compute figures of the model, subgraph bodies included (see ``_graph_costs``).

    ``input_shapes``: the shapes the model runs at, for inputs whose dims are symbolic.
    """
    shapes = value_shapes(model, input_shapes)
    costs = tuple(_graph_costs(model.graph, shapes))
    histogram: collections.Counter[str] = collections.Counter()
    for node in all_nodes(model.graph):
        histogram[node.op_type] += 1
    initializers = [t for graph in _all_graphs(model.graph) for t in graph.initializer]
    params = sum(math.prod(t.dims) for t in initializers)
    size = sum(_tensor_bytes(t) for t in initializers)
    return ModelStats(
        nodes=sum(histogram.values()),
        params=params,
        flops=sum(c.flops for c in costs),
        size_bytes=size,
        op_histogram=dict(histogram.most_common()),
        node_costs=costs,
    )


def all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of the If/Loop/Scan bodies in it, at every depth."""
    for sub in _all_graphs(graph):
        yield from sub.node
