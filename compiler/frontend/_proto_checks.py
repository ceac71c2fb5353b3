"""Checks of a parsed ModelProto that onnx's checker leaves out; each failure is a ModelLoadError naming the field.

A corrupt or hostile file can parse and pass the checker yet hold strings that are not UTF-8 (protobuf hands
them over as bytes), data types that are no ONNX type, raw data of another size than its dims need, or a
graph input that is also a graph output under another declared type. Each of those used to surface deep in
onnx_ir, ORT or numpy as a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from edgec.core.errors import ModelLoadError

_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values())
# int32 fields that hold a TensorProto.DataType: TensorProto.data_type, TypeProto.Tensor/SparseTensor.elem_type,
# TypeProto.Map.key_type.
_TYPE_FIELDS = frozenset({"data_type", "elem_type", "key_type"})


def check_fields(path: Path, proto: onnx.ModelProto) -> None:
    """Refuse non-UTF-8 strings and data types that are no ONNX type, naming the first such field."""
    problem = _bad_field(proto, "model")
    if problem:
        raise ModelLoadError(f"{path}: {problem}")


def _bad_field(message: Message, where: str) -> str | None:
    """What is wrong with the first bad field of ``message`` (recursively), or None.

    Only string, int32 and message fields are read: tensor data (bytes and repeated numbers) is never copied.
    """
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            values = getattr(message, field.name) if field.is_repeated else [getattr(message, field.name)]
            if any(isinstance(v, bytes) for v in values):
                return f"{where}.{field.name} is not valid UTF-8 (a corrupt file?)"
        elif field.type == FieldDescriptor.TYPE_INT32 and field.name in _TYPE_FIELDS and not field.is_repeated:
            value = getattr(message, field.name)
            if value not in _DATA_TYPES:
                return f"{where}.{field.name} is {value}, not an ONNX data type"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            problem = _bad_submessages(message, field, where)
            if problem:
                return problem
    return None


def _bad_submessages(message: Message, field: FieldDescriptor, where: str) -> str | None:
    subs = getattr(message, field.name) if field.is_repeated else \
        ([getattr(message, field.name)] if message.HasField(field.name) else [])
    for i, sub in enumerate(subs):
        name = getattr(sub, "name", "") if "name" in sub.DESCRIPTOR.fields_by_name else ""
        label = f"{where}.{field.name}" + (f"[{i}]" if field.is_repeated else "") + \
            (f" ({name!r})" if isinstance(name, str) and name else "")
        problem = _bad_field(sub, label)
        if problem:
            return problem
    return None


# Element widths that raw_data packs below a byte; other types take their numpy itemsize.
_PACKED_BITS = {getattr(onnx.TensorProto, name): bits
                for name, bits in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2))
                if hasattr(onnx.TensorProto, name)}
_UNCHECKED = {onnx.TensorProto.STRING, *(getattr(onnx.TensorProto, n) for n in ("FLOAT6E2M3", "FLOAT6E3M2")
                                         if hasattr(onnx.TensorProto, n))}


def check_raw_size(path: Path, tensor: onnx.TensorProto) -> None:
    """Refuse raw data longer or shorter than the tensor's dims and type need (the checker catches only short)."""
    if not tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL \
            or tensor.data_type in _UNCHECKED:
        return
    try:
        bits = _PACKED_BITS.get(tensor.data_type) or onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * 8
    except (KeyError, ValueError, TypeError):
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} has data type {tensor.data_type}, which holds no "
                             "raw data") from None
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} has a negative dim: {dims}")
    need = (math.prod(dims) * bits + 7) // 8
    have = len(tensor.raw_data)
    if have != need:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} holds {have} bytes of data, but dims {dims} of "
                             f"{onnx.TensorProto.DataType.Name(tensor.data_type)} need {need}")


def check_passthrough_outputs(path: Path, proto: onnx.ModelProto) -> None:
    """A graph output that is a graph input names one value: its two declarations must agree."""
    inputs = {vi.name: vi.type for vi in proto.graph.input}
    for output in proto.graph.output:
        declared = inputs.get(output.name)
        if declared is not None and _contradicts(declared, output.type):
            raise ModelLoadError(f"{path}: output {output.name!r} is graph input {output.name!r} itself, but the "
                                 "two declare different types or shapes")


def _contradicts(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    if a.WhichOneof("value") != b.WhichOneof("value"):
        return True
    if not (a.HasField("tensor_type") and b.HasField("tensor_type")):
        return a != b
    ta, tb = a.tensor_type, b.tensor_type
    if ta.elem_type != tb.elem_type:
        return True
    if not (ta.HasField("shape") and tb.HasField("shape")):
        return False
    if len(ta.shape.dim) != len(tb.shape.dim):
        return True
    return any(x.HasField("dim_value") and y.HasField("dim_value") and x.dim_value != y.dim_value
               for x, y in zip(ta.shape.dim, tb.shape.dim, strict=True))
