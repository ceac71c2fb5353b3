"""A model's run-time inputs as calibration sees them (tensors, sequences, optionals), and checking a sample."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from edgec.compiler.frontend.normalize import real_inputs
from edgec.core.errors import CalibrationError
from edgec.core.ir import Feeds
from edgec.runtime.values import kind_phrase, value_kind


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype, dims (None where dynamic); for a sequence, its elements' dtype and dims.

    ``kind`` is "tensor", "sequence" (fed a list of arrays) or "optional" (fed None when absent, else a
    list of arrays when ``sequence``, else an array). ``dims`` is None when a sequence's elements have no
    declared rank.
    """

    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...] | None
    symbols: tuple[str, ...] = ()  # each dim's symbol ('batch', 'height'), '' for fixed or unnamed dims
    kind: str = "tensor"
    sequence: bool = False

    def shape_text(self) -> str:
        if self.dims is None:
            return "(any shape)"
        return "(" + ", ".join("?" if d is None else str(d) for d in self.dims) + ")"

    def npz_keys(self) -> str:
        """How an .npz names this input's arrays: ``x``, or ``xs/<i>`` for a sequence's elements."""
        key = f"{self.name}/<i>" if self.sequence else self.name
        return f"{key} (optional)" if self.kind == "optional" else key


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs fed at run time, with dtypes and dims; a user error for inputs edgec cannot feed (maps)."""
    specs = []
    for vi in real_inputs(model.graph):
        try:
            kind = value_kind(vi.type)
        except ValueError as err:
            raise CalibrationError(f"input {vi.name!r} is {err}: edgec's calibration data and the bundle's stored "
                                   "sample hold tensors, sequences of tensors and optionals of those only "
                                   "(a known limit)") from err
        tensor_type = kind.tensor
        if not tensor_type.elem_type:
            what = "of no declared tensor type" if kind.kind == "tensor" else \
                f"{kind_phrase(kind.kind, kind.sequence)} of no declared element type"
            raise CalibrationError(f"input {vi.name!r} is {what}: edgec's calibration data and the bundle's "
                                   "stored sample need its dtype (a known limit)")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = tensor_type.shape.dim
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in shape)
        unranked = kind.sequence and not tensor_type.HasField("shape")
        specs.append(InputSpec(vi.name, dtype, None if unranked else dims, tuple(d.dim_param for d in shape),
                               kind.kind, kind.sequence))
    return specs


def check_sample(sample: Feeds, inputs: list[InputSpec], source: str) -> None:
    """Every input present (an absent optional may be None or left out) with its dtype and fitting shapes."""
    names = [s.name for s in inputs]
    for spec in inputs:
        if spec.name not in sample:
            if spec.kind == "optional":
                continue
            raise CalibrationError(f"{source}: no data for input {spec.name!r}; expected: {', '.join(names)}")
        value = sample[spec.name]
        if value is None:
            if spec.kind != "optional":
                raise CalibrationError(f"{source}: input {spec.name!r} is None; only an optional input may be absent")
        elif spec.sequence:
            if not isinstance(value, list | tuple):
                raise CalibrationError(f"{source}: input {spec.name!r} is {kind_phrase(spec.kind, True)}: "
                                       f"expected a list of arrays, got {type(value).__name__}")
            for i, element in enumerate(value):
                _check_array(element, spec, source, f"input {spec.name!r} element {i}")
        elif isinstance(value, list | tuple):
            raise CalibrationError(f"{source}: input {spec.name!r} is {kind_phrase(spec.kind, False)}, "
                                   "not a sequence: expected an array, got a list")
        else:
            _check_array(value, spec, source, f"input {spec.name!r}")


def _check_array(arr: Any, spec: InputSpec, source: str, what: str) -> None:
    if not hasattr(arr, "dtype"):
        raise CalibrationError(f"{source}: {what} is a {type(arr).__name__}, expected a numpy array")
    if arr.dtype != spec.dtype:
        raise CalibrationError(f"{source}: {what} has dtype {arr.dtype}, expected {spec.dtype}")
    if spec.dims is not None and not fits(arr.shape, spec.dims):
        raise CalibrationError(f"{source}: {what} has shape {tuple(arr.shape)}, expected {spec.shape_text()}")


def fits(shape: Sequence[int], dims: Sequence[int | None]) -> bool:
    """Whether an array's shape has the dims' rank and matches every fixed dim."""
    return len(shape) == len(dims) and all(d is None or d == s for s, d in zip(shape, dims, strict=True))
