"""Model values beyond tensors (sequences, optionals): their kinds, shapes and pickle-free .npz keys.

A value fed to ONNX Runtime or returned by it is a numpy array (a tensor), a list of arrays (a
``sequence(tensor)``), or None (an absent ``optional``; a present one is a tensor or a sequence). In an
``.npz`` (calibration files, a bundle's samples) the value stored under key ``K`` is:

* a tensor: the array ``K``;
* a sequence: ``K/0``, ``K/1``, ... one array per element, in order; an empty sequence: ``K/__empty__``, a
  0-size array (of the element dtype by convention; only its key is read);
* an absent optional: no key at all; a present one is stored as its tensor or sequence.

String tensors are stored as unicode arrays (numpy object arrays would need pickle) and read back as object
arrays where the model takes strings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx

Value = Any  # np.ndarray | list[np.ndarray] | None
KINDS = ("tensor", "sequence", "optional")
EMPTY = "__empty__"
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")


@dataclasses.dataclass(frozen=True)
class ValueKind:
    """What an ONNX type holds.

    ``kind`` (tensor, sequence or optional), whether a present value is a list of tensors (``sequence``),
    and the tensor type of the tensor or of each element.
    """

    kind: str
    sequence: bool
    tensor: onnx.TypeProto.Tensor


def value_kind(type_proto: onnx.TypeProto) -> ValueKind:
    """The kind of an input's or output's type; ValueError naming what it is ('a map') when edgec cannot hold it."""
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        return ValueKind("tensor", False, type_proto.tensor_type)
    if which == "sequence_type" and type_proto.sequence_type.elem_type.HasField("tensor_type"):
        return ValueKind("sequence", True, type_proto.sequence_type.elem_type.tensor_type)
    if which == "optional_type":
        inner = value_kind(type_proto.optional_type.elem_type) if type_proto.optional_type.HasField(
            "elem_type") else None
        if inner is not None and inner.kind != "optional":
            return ValueKind("optional", inner.sequence, inner.tensor)
        raise ValueError("an optional of something other than a tensor or a sequence of tensors")
    raise ValueError({"sequence_type": "a sequence of something other than tensors", "map_type": "a map",
                      "sparse_tensor_type": "a sparse tensor"}.get(which or "", "of no declared type"))


def kind_phrase(kind: str, sequence: bool) -> str:
    """'a tensor', 'a sequence', 'an optional tensor' or 'an optional sequence'."""
    if kind == "optional":
        return f"an optional {'sequence' if sequence else 'tensor'}"
    return f"a {kind}"


def plain(array: Any) -> np.ndarray:
    """A C-contiguous array that .npz stores without pickle (strings as unicode); keeps a 0-d array 0-d."""
    array = np.require(array, requirements="C")
    return array.astype(str) if array.dtype == object else array


def encode(key: str, value: Value, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The .npz arrays that store ``value`` under ``key`` (``dtype``: the empty-sequence marker's)."""
    if value is None:
        return {}
    if isinstance(value, list | tuple):
        if not value:
            return {f"{key}/{EMPTY}": np.zeros(0, dtype=_marker_dtype(dtype))}
        return {f"{key}/{i}": plain(element) for i, element in enumerate(value)}
    return {key: plain(value)}


def _marker_dtype(dtype: Any) -> np.dtype:
    """``dtype`` where .npz stores it plainly: str for strings, float32 for types numpy lacks (bfloat16)."""
    try:
        marker = np.dtype(dtype)
    except TypeError:
        return np.dtype(np.float32)
    if marker.kind == "O":
        return np.dtype(str)
    return marker if marker.kind in "biufcU" else np.dtype(np.float32)


def group_keys(keys: Iterable[str], names: Mapping[str, bool]) -> tuple[dict[str, list[str]], list[str]]:
    """The keys of each value ``names`` lists (name -> whether it holds a sequence), and the keys of none.

    A tensor's list is ``[name]``; a sequence's is its element keys in order (``[]`` when empty). A value
    with no key is left out. ValueError for a sequence with a gap in its elements or both elements and
    the empty marker.
    """
    groups: dict[str, list[str]] = {}
    stray = []
    for key in keys:
        base, _, tail = key.rpartition("/")
        if key in names and not names[key]:
            groups.setdefault(key, []).append(key)
        elif names.get(base) and (tail == EMPTY or _INDEX.fullmatch(tail)):
            groups.setdefault(base, []).append(key)
        else:
            stray.append(key)
    return {name: _element_keys(name, found) if names[name] else found for name, found in groups.items()}, stray


def _element_keys(name: str, keys: list[str]) -> list[str]:
    if f"{name}/{EMPTY}" in keys:
        if len(keys) > 1:
            raise ValueError(f"sequence {name!r} has both {name}/{EMPTY} and elements")
        return []
    indices = {int(key.rpartition("/")[2]) for key in keys}
    missing = next(i for i in range(len(indices) + 1) if i not in indices)
    if missing < len(indices):
        raise ValueError(f"sequence {name!r} has elements up to {name}/{max(indices)} but no {name}/{missing}")
    return [f"{name}/{i}" for i in range(len(indices))]


def decode(arrays: Mapping[str, np.ndarray], keys: list[str] | None, sequence: bool, strings: bool = False) -> Value:
    """The value stored under ``keys`` (from group_keys; None: absent).

    Unicode arrays come back as object arrays when the model takes ``strings``.
    """
    if keys is None:
        return None

    def read(key: str) -> np.ndarray:
        array = arrays[key]
        return array.astype(object) if strings and array.dtype.kind == "U" else array

    return [read(key) for key in keys] if sequence else read(keys[0])


def value_shape(value: Value) -> Any:
    """JSON-able shape: a tensor's dims, a list of each element's dims for a sequence, None when absent."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [list(np.shape(element)) for element in value]
    return list(np.shape(value))


def shape_text(value: Value) -> str:
    """``1x3x32`` (``scalar`` for 0-d), ``[2x3, 4]`` for a sequence, ``absent`` for a missing optional."""
    if value is None:
        return "absent"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(shape_text(element) for element in value) + "]"
    return "x".join(map(str, np.shape(value))) or "scalar"
