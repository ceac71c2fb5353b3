"""Per-node precision maps: which precisions each node can take on a target, and checking a user's map.

A node's choices are the precisions whose format the target lists (``quantization_formats``) and
whose kernel applies to the node's op:

  - ``int8``: static QDQ (weights per channel, activations in the target's dtype) on Conv, ConvTranspose,
    Gemm and MatMul; format ``int8-qdq``;
  - ``int4``: MatMulNBits, for MatMuls whose weight is a constant 2-D tensor; format ``int4-matmulnbits``;
  - ``fp8``: float8 weights with a per-channel scale, for nodes with a constant weight; format ``fp8-qdq``;
  - ``fp16``: the node's compute in float16, for any float node; format ``fp16``;
  - ``fp32``: always.

Only named nodes of those weighted ops are listed: they carry nearly all of the cost and the error,
and a name is what a map refers to. Other nodes follow the map's default (see mixed_precision).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.core.errors import ConfigError, PrecisionError
from edgec.passes.quant.common import FP8, FP16, INT4, INT8_QDQ
from edgec.passes.quant.lowbit import drop_unused_initializers, weight_slots
from edgec.targets.profile import TargetProfile

PRECISIONS = ("int8", "int4", "fp16", "fp8", "fp32")
FORMAT_OF = {"int8": INT8_QDQ, "int4": INT4, "fp16": FP16, "fp8": FP8}
INT8_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _int4_matmuls(proto: onnx.ModelProto) -> set[str]:
    return {slot.node.name for slot in weight_slots(proto)
            if slot.node.op_type == "MatMul" and len(slot.tensor.dims) == 2}


def applicable(proto: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Precisions each listed node's op admits, regardless of target (fp32 always last)."""
    int4 = _int4_matmuls(proto)
    const_weight = {slot.node.name for slot in weight_slots(proto)}
    choices = {}
    for node in proto.graph.node:
        if not node.name or node.op_type not in INT8_OPS:
            continue
        found = ["int8"]
        if node.name in int4:
            found.append("int4")
        found.append("fp16")
        if node.name in const_weight:
            found.append("fp8")
        choices[node.name] = (*found, "fp32")
    return choices


def node_choices(proto: onnx.ModelProto, target: TargetProfile) -> dict[str, tuple[str, ...]]:
    """``{node name: precisions}`` that ``target`` runs for that node (see module doc), in model order."""
    formats = set(target.quantization_formats)
    return {name: tuple(p for p in found if p == "fp32" or FORMAT_OF[p] in formats)
            for name, found in applicable(proto).items()}


def check_precision_names(precisions: Mapping[str, str], default: str, owner: str) -> None:
    """Refuse a precision name edgec does not know (a config error, before any model is read)."""
    if not isinstance(precisions, Mapping):
        raise ConfigError(f"{owner}: precisions must be a table of node name = precision, got {precisions!r}")
    for where, value in [("default", default), *((f"precisions.{k}", v) for k, v in precisions.items())]:
        if value not in PRECISIONS:
            raise ConfigError(f"{owner}: {where}: {value!r} is not one of {', '.join(PRECISIONS)}")


def resolve(proto: onnx.ModelProto, target: TargetProfile, precisions: Mapping[str, str], default: str,
            owner: str) -> tuple[dict[str, str], dict[str, str]]:
    """The precision of every listed node: the map's, else ``default`` where it applies, else fp32.

    Returns (map, notes on nodes the default could not apply to). A named node that does not exist, or
    a precision that its op or the target cannot run, is an error naming the node.
    """
    names = {n.name for n in proto.graph.node}
    admitted, runnable = applicable(proto), node_choices(proto, target)
    for name, precision in precisions.items():
        if name not in names:
            raise ConfigError(f"{owner}: precisions: no node named {name!r} in the model")
        if name not in admitted:
            op = next(n.op_type for n in proto.graph.node if n.name == name)
            raise ConfigError(f"{owner}: precisions.{name}: {op} nodes take no per-node precision "
                              f"(only {', '.join(sorted(INT8_OPS))})")
        if precision not in admitted[name]:
            raise ConfigError(f"{owner}: precisions.{name}: {precision} does not apply to this node "
                              f"(choices: {', '.join(admitted[name])})")
        if precision not in runnable[name]:
            raise PrecisionError(f"{owner}: precisions.{name}: target {target.name} does not run "
                                 f"{FORMAT_OF[precision]}")
    resolved, notes = {}, {}
    for name, choices in runnable.items():
        if name in precisions:
            resolved[name] = precisions[name]
        elif default in choices:
            resolved[name] = default
        else:
            resolved[name] = "fp32"
            notes[name] = f"default {default} does not apply here or on {target.name}; kept fp32"
    return resolved, notes


def cast_nodes_to_fp16(proto: onnx.ModelProto, names: set[str]) -> int:
    """Run the named Conv/Gemm/MatMul nodes in float16; returns how many were converted.

    Weights are stored fp16, with a Cast on each other input and one back to float32 on each output, so the
    rest of the graph and its I/O keep their dtypes.

    Written here rather than with ORT's float16 converter: asked to convert a few nodes of a QDQ graph,
    the converter also converts the Q/DQ scales around them and adds a Cast pair per tensor it touched
    (149 Casts on a 10-conv ResNet); this adds two or three per node.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    nodes, done = [], 0
    for node in proto.graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        for index, name in enumerate(node.input):
            if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT:
                node.input[index] = _fp16_initializer(proto, inits[name])
            elif name:
                cast = f"{name}/fp16_for_{node.name}"
                nodes.append(helper.make_node("Cast", [name], [cast], f"{node.name}/cast_in{index}",
                                              to=onnx.TensorProto.FLOAT16))
                node.input[index] = cast
        nodes.append(node)
        for index, name in enumerate(node.output):
            node.output[index] = f"{name}/fp16"
            nodes.append(helper.make_node("Cast", [node.output[index]], [name], f"{node.name}/cast_out{index}",
                                          to=onnx.TensorProto.FLOAT))
        done += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    drop_unused_initializers(proto)
    return done


def _fp16_initializer(proto: onnx.ModelProto, tensor: onnx.TensorProto) -> str:
    name = f"{tensor.name}_fp16"
    if not any(t.name == name for t in proto.graph.initializer):
        array = numpy_helper.to_array(tensor).astype(np.float16)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    return name
