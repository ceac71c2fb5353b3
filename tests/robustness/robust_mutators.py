"""Seeded mutators for the fuzzer: byte edits of a serialized model, ModelProto field edits, calibration edits.

Each mutator takes a ``random.Random`` and the thing it breaks, edits it in place (or returns new bytes), and
returns a short description of what it did, or None when it does not apply (a model without attributes for
``attr-value``, say). The same rng state always gives the same edit: a mutant is reproduced by its seed and
index alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_OPS = sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain == ""})
ODD_OPS = ["", "NoSuchOp", "Conv ", "conv"]
ODD_DOMAINS = ["com.microsoft", "ai.onnx.ml", "com.example", "ai.onnx"]
DTYPES = sorted(TensorProto.DataType.values()) + [99, -1]
INTS = [-(1 << 63), -(1 << 31), -2, -1, 0, 1, 2, 3, 7, (1 << 31) - 1, 1 << 40, (1 << 63) - 1]
FLOATS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e-45, 1e30]
DIMS = [-(1 << 40), -1, 0, 1, 2, 7, (1 << 31) - 1, 1 << 31, 1 << 40, (1 << 62)]
ATTR_NAMES = ["axis", "axes", "perm", "kernel_shape", "pads", "strides", "dilations", "group", "to", "keepdims",
              "transB", "alpha", "mode", "value", "then_branch", "body", "split", "epsilon", "auto_pad"]

ProtoMutator = Callable[[random.Random, onnx.ModelProto], "str | None"]
CalibMutator = Callable[[random.Random, dict[str, np.ndarray]], "str | None"]


# --- bytes ----------------------------------------------------------------------------------------------

def bytes_flip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    buf = bytearray(data)
    spots = sorted(rng.randrange(len(buf)) for _ in range(rng.choice([1, 1, 2, 4, 16])))
    for spot in spots:
        buf[spot] ^= rng.randrange(1, 256)
    return bytes(buf), f"xor at offsets {spots[:8]}"


def bytes_truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    keep = rng.randrange(len(data))
    return data[:keep], f"kept {keep} of {len(data)} bytes"


def bytes_insert(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        start = rng.randrange(len(data))
        chunk = data[start:start + rng.randrange(1, 256)]
        what = f"a copy of bytes {start}..{start + len(chunk)}"
    else:
        chunk = rng.randbytes(rng.randrange(1, 64))
        what = f"{len(chunk)} random bytes"
    return data[:at] + chunk + data[at:], f"inserted {what} at {at}"


BYTE_MUTATORS: dict[str, Callable[[random.Random, bytes], tuple[bytes, str]]] = {
    "bytes-flip": bytes_flip, "bytes-truncate": bytes_truncate, "bytes-insert": bytes_insert}


# --- ModelProto fields ------------------------------------------------------------------------------------

def _value_names(graph: onnx.GraphProto) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    return names + [o for n in graph.node for o in n.output]


def _node_name(graph: onnx.GraphProto, index: int) -> str:
    return graph.node[index].name or f"#{index}"


def op_type(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    if not graph.node:
        return None
    k = rng.randrange(len(graph.node))
    node, old = graph.node[k], graph.node[k].op_type
    if rng.random() < 0.15:
        node.domain = rng.choice(ODD_DOMAINS)
        return f"node {_node_name(graph, k)}: domain -> {node.domain!r}"
    node.op_type = rng.choice(ODD_OPS) if rng.random() < 0.1 else rng.choice(ONNX_OPS)
    return f"node {_node_name(graph, k)}: op {old} -> {node.op_type!r}"


def drop_node(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    if len(graph.node) < 2:
        return None
    k = rng.randrange(len(graph.node))
    name = _node_name(graph, k)
    del graph.node[k]
    return f"dropped node {name}"


def dup_node(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    if not graph.node:
        return None
    k = rng.randrange(len(graph.node))
    copy = onnx.NodeProto()
    copy.CopyFrom(graph.node[k])
    renamed = rng.random() < 0.5
    if renamed:
        copy.output[:] = [f"{o}_dup" for o in copy.output]
        copy.name = f"{copy.name}_dup"
    graph.node.insert(rng.randrange(len(graph.node) + 1), copy)
    return f"duplicated node {_node_name(graph, k)}" + (" (outputs renamed)" if renamed else " (same outputs)")


def _node_with_inputs(rng: random.Random, graph: onnx.GraphProto) -> int | None:
    """The index of a random node that reads something, or None when no node does."""
    candidates = [i for i, n in enumerate(graph.node) if n.input]
    return rng.choice(candidates) if candidates else None


def rewire_input(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    k = _node_with_inputs(rng, graph)
    if k is None:
        return None
    node = graph.node[k]
    new = rng.choice([*_value_names(graph), "ghost", ""])
    if rng.random() < 0.2:
        node.input.append(new)
        return f"node {_node_name(graph, k)}: extra input {new!r}"
    j = rng.randrange(len(node.input))
    old, node.input[j] = node.input[j], new
    return f"node {_node_name(graph, k)}: input {j} {old!r} -> {new!r}"


def _mutate_tensor(rng: random.Random, tensor: onnx.TensorProto) -> str:
    """One edit of a tensor: dims, data type, data length, or an external-data pointer."""
    what = rng.choice(["dims", "dims", "dtype", "data", "data", "external"])
    if what == "dims":
        dims = list(tensor.dims)
        edit = rng.choice(["set", "drop", "add", "permute", "scalar"])
        if edit == "set" and dims:
            dims[rng.randrange(len(dims))] = rng.choice(DIMS)
        elif edit == "drop" and dims:
            dims.pop(rng.randrange(len(dims)))
        elif edit == "add":
            dims.insert(rng.randrange(len(dims) + 1), rng.choice([1, 1, 2, 0, -1, 1 << 31]))
        elif edit == "permute":
            rng.shuffle(dims)
        else:
            dims = []
        tensor.dims[:] = dims
        return f"dims {edit} -> {dims[:6]}"
    if what == "dtype":
        tensor.data_type = rng.choice(DTYPES)
        return f"data_type -> {tensor.data_type}"
    if what == "external":
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        location = rng.choice(["missing.bin", "../outside.bin", "model.onnx", "calib.npz", "/etc/hostname", ""])
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value=location)
        return f"external data at {location!r}"
    return _mutate_data(rng, tensor)


def _mutate_data(rng: random.Random, tensor: onnx.TensorProto) -> str:
    if tensor.raw_data:
        raw = tensor.raw_data
        edit = rng.choice(["cut", "grow", "clear"])
        tensor.raw_data = {"cut": raw[: rng.randrange(len(raw))], "grow": raw + rng.randbytes(rng.randrange(1, 64)),
                           "clear": b""}[edit]
        return f"raw_data {edit}: {len(raw)} -> {len(tensor.raw_data)} bytes"
    tensor.float_data.extend([rng.choice(FLOATS)] * rng.randrange(1, 5))
    tensor.int64_data.extend([rng.choice(INTS)] * rng.randrange(0, 3))
    return "typed data fields grown"


def attr_value(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    if not graph.node:
        return None
    with_attrs = [i for i, n in enumerate(graph.node) if n.attribute]
    if not with_attrs or rng.random() < 0.2:
        k = rng.randrange(len(graph.node))
        name = rng.choice(ATTR_NAMES)
        value = rng.choice([rng.choice(INTS), [rng.choice(INTS)] * rng.randrange(1, 5), rng.choice(FLOATS), "x"])
        graph.node[k].attribute.append(helper.make_attribute(name, value))
        return f"node {_node_name(graph, k)}: added attribute {name}={value!r}"
    k = rng.choice(with_attrs)
    attr = rng.choice(graph.node[k].attribute)
    return f"node {_node_name(graph, k)} attribute {attr.name}: " + _mutate_attribute(rng, attr)


def _mutate_attribute(rng: random.Random, attr: onnx.AttributeProto) -> str:
    if rng.random() < 0.2:  # another type, and the field of the new type left empty or filled
        attr.type = rng.choice([t for t in onnx.AttributeProto.AttributeType.values() if t != attr.type])
        return f"type -> {attr.type}"
    if attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice(INTS)
        return f"i -> {attr.i}"
    if attr.type == onnx.AttributeProto.INTS:
        values = list(attr.ints)
        edit = rng.choice(["set", "drop", "add", "empty"])
        if edit == "set" and values:
            values[rng.randrange(len(values))] = rng.choice(INTS)
        elif edit == "drop" and values:
            values.pop()
        elif edit == "add":
            values.append(rng.choice(INTS))
        else:
            values = []
        attr.ints[:] = values
        return f"ints {edit} -> {values[:6]}"
    if attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
        attr.f = rng.choice(FLOATS)
        attr.floats[:] = [rng.choice(FLOATS)] * len(attr.floats)
        return f"f -> {attr.f}"
    if attr.type == onnx.AttributeProto.STRING:
        attr.s = rng.choice([b"", b"NOTSET", b"bogus", rng.randbytes(8)])
        return f"s -> {attr.s!r}"
    if attr.type == onnx.AttributeProto.TENSOR:
        return "tensor " + _mutate_tensor(rng, attr.t)
    if attr.type == onnx.AttributeProto.GRAPH and attr.g.node:
        del attr.g.node[rng.randrange(len(attr.g.node))]
        return "dropped a subgraph node"
    attr.ClearField("type")
    return "type cleared"


def initializer(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    if not graph.initializer:
        return None
    tensor = rng.choice(graph.initializer)
    return f"initializer {tensor.name!r}: " + _mutate_tensor(rng, tensor)


def initializer_values(rng: random.Random, model: onnx.ModelProto) -> str | None:
    """New values of the same dims and type: NaN, infinity, zeros, huge, or an extreme integer (a shape, an axis)."""
    inits = [t for t in model.graph.initializer if t.data_type != TensorProto.STRING]
    if not inits:
        return None
    tensor = rng.choice(inits)
    try:
        array = numpy_helper.to_array(tensor).copy()
    except (ValueError, TypeError):
        return None
    if not array.size:
        return None
    flat = array.reshape(-1)
    if array.dtype.kind == "f":
        edit = rng.choice(["nan", "inf", "zeros", "huge", "tiny"])
        value = {"nan": np.nan, "inf": np.inf, "zeros": 0.0, "huge": 3e38, "tiny": 1e-45}[edit]
        if edit in ("nan", "inf"):
            flat[rng.randrange(flat.size)] = value
        else:
            flat[:] = value
    elif array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        value = rng.choice([v for v in (*INTS, -3) if info.min <= v <= info.max])
        edit = f"one value -> {value}"
        flat[rng.randrange(flat.size)] = value
    else:
        return None
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return f"initializer {tensor.name!r} values: {edit}"


def _mutate_type(rng: random.Random, value: onnx.ValueInfoProto) -> str:
    tensor_type = value.type.tensor_type
    dims = tensor_type.shape.dim
    edit = rng.choice(["dtype", "dtype", "dim", "dim", "symbolic", "drop", "add", "unranked", "untyped"])
    if edit == "dtype":
        tensor_type.elem_type = rng.choice(DTYPES)
        return f"elem_type -> {tensor_type.elem_type}"
    if edit in ("dim", "symbolic") and dims:
        dim = dims[rng.randrange(len(dims))]
        if edit == "dim":
            dim.dim_value = rng.choice(DIMS)
        else:
            dim.dim_param = rng.choice(["N", "", "batch", "?", "1"])
        return f"a dim -> {dim}".strip()
    if edit == "drop" and dims:
        del dims[rng.randrange(len(dims))]
        return "dropped a dim"
    if edit == "add":
        tensor_type.shape.dim.add().dim_value = rng.choice([1, 3, 0, -1])
        return "added a dim"
    if edit == "untyped":
        value.ClearField("type")
        return "type cleared"
    tensor_type.ClearField("shape")
    return "shape cleared"


def input_type(rng: random.Random, model: onnx.ModelProto) -> str | None:
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if not inputs:
        return None
    value = rng.choice(inputs)
    return f"input {value.name!r}: " + _mutate_type(rng, value)


def output_type(rng: random.Random, model: onnx.ModelProto) -> str | None:
    values = list(model.graph.output) + list(model.graph.value_info)
    if not values:
        return None
    value = rng.choice(values)
    return f"value {value.name!r}: " + _mutate_type(rng, value)


def versions(rng: random.Random, model: onnx.ModelProto) -> str | None:
    edit = rng.choice(["opset", "opset", "ir", "ir", "no-opset", "extra-domain"])
    if edit == "opset" and model.opset_import:
        model.opset_import[0].version = rng.choice([-1, 0, 1, 6, 7, 9, 11, 13, 19, 21, 22, 23, 25, 99, 1 << 40])
        return f"opset -> {model.opset_import[0].version}"
    if edit == "ir":
        model.ir_version = rng.choice([-1, 0, 1, 2, 3, 4, 7, 11, 12, 13, 99, 1 << 40])
        return f"ir_version -> {model.ir_version}"
    if edit == "no-opset":
        del model.opset_import[:]
        return "opset imports removed"
    model.opset_import.append(helper.make_opsetid(rng.choice(["", *ODD_DOMAINS]), rng.choice([1, 3, 99])))
    return f"opset import added: {model.opset_import[-1]}".replace("\n", " ")


def outputs(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    if not graph.output:
        return None
    edit = rng.choice(["remove-all", "remove-one", "ghost", "duplicate", "input"])
    if edit == "remove-all":
        del graph.output[:]
    elif edit == "remove-one":
        del graph.output[rng.randrange(len(graph.output))]
    elif edit == "ghost":
        graph.output[0].name = "ghost"
    elif edit == "duplicate":
        graph.output.append(graph.output[0])
    elif graph.input:
        graph.output[0].name = graph.input[0].name
    return f"outputs {edit}"


def cycle(rng: random.Random, model: onnx.ModelProto) -> str | None:
    graph = model.graph
    k = _node_with_inputs(rng, graph)
    if k is None:
        return None
    later = [o for n in graph.node[k:] for o in n.output if o]
    if not later:
        return None
    target = rng.choice(later)
    j = rng.randrange(len(graph.node[k].input))
    graph.node[k].input[j] = target
    return f"node {_node_name(graph, k)}: input {j} -> {target!r} (produced at or after it)"


PROTO_MUTATORS: dict[str, ProtoMutator] = {
    "op-type": op_type, "drop-node": drop_node, "dup-node": dup_node, "rewire-input": rewire_input,
    "attr-value": attr_value, "initializer": initializer, "init-values": initializer_values,
    "input-type": input_type, "output-type": output_type,
    "versions": versions, "outputs": outputs, "cycle": cycle}


# --- calibration ----------------------------------------------------------------------------------------

def calib_dtype(rng: random.Random, calib: dict[str, np.ndarray]) -> str | None:
    name = rng.choice(sorted(calib))
    dtype = rng.choice(["float64", "float16", "int32", "int64", "uint8", "bool", "complex64", "U3", "object"])
    calib[name] = calib[name].astype(dtype)
    return f"calib {name!r}: dtype -> {dtype}"


def calib_shape(rng: random.Random, calib: dict[str, np.ndarray]) -> str | None:
    name = rng.choice(sorted(calib))
    array = calib[name]
    edit = rng.choice(["drop-axis", "add-axis", "transpose", "grow", "empty", "scalar"])
    if edit == "drop-axis" and array.ndim > 1:
        array = array[(slice(None),) * (array.ndim - 1) + (0,)]
    elif edit == "add-axis":
        array = array[..., None]
    elif edit == "transpose":
        array = np.ascontiguousarray(array.T)
    elif edit == "grow":
        array = np.concatenate([array, array], axis=array.ndim - 1) if array.ndim else array
    elif edit == "empty":
        array = array[:0]
    else:
        array = np.asarray(array.reshape(-1)[0] if array.size else 0)
    calib[name] = array
    return f"calib {name!r}: {edit} -> shape {array.shape}"


def calib_values(rng: random.Random, calib: dict[str, np.ndarray]) -> str | None:
    name = rng.choice(sorted(calib))
    array = calib[name].copy()
    if array.dtype.kind != "f" or not array.size:
        array = np.full(array.shape, rng.choice([-(1 << 62), -1, 1 << 40]), array.dtype) if array.dtype.kind in "iu" \
            else array
        calib[name] = array
        return f"calib {name!r}: extreme integers"
    value = rng.choice([np.nan, np.inf, -np.inf, 3e38])
    array.reshape(-1)[rng.randrange(array.size)] = value
    calib[name] = array
    return f"calib {name!r}: one value -> {value}"


def calib_keys(rng: random.Random, calib: dict[str, np.ndarray]) -> str | None:
    name = rng.choice(sorted(calib))
    edit = rng.choice(["drop", "rename", "extra", "sequence"])
    if edit == "drop":
        del calib[name]
    elif edit == "rename":
        calib[name + "_x"] = calib.pop(name)
    elif edit == "extra":
        calib["extra"] = calib[name]
    else:
        calib[f"{name}/0"] = calib.pop(name)
    return f"calib {name!r}: {edit}"


CALIB_MUTATORS: dict[str, CalibMutator] = {
    "calib-dtype": calib_dtype, "calib-shape": calib_shape, "calib-values": calib_values, "calib-keys": calib_keys}
