"""Normalize an ONNX model: upgrade old opsets, fix input dims, infer shapes; each step leaves a note."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import onnx
from onnx import version_converter

from edgec.core.errors import ConfigError

logger = logging.getLogger(__name__)

_CXX_PREFIX = re.compile(r"^\S+\.cc:\d+: \w+: ")  # "/project/onnx/.../convert.cc:101: convert_graph: "
MIN_OPSET = 13
TARGET_OPSET = 17


def normalize(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
              upgrade: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """The normalized model and what was done to it, in words; ``upgrade=False`` keeps the opset."""
    notes: list[str] = []
    upgrade_ir(proto, notes)
    if upgrade:
        proto = upgrade_opset(proto, notes)
    if input_shapes:
        fix_input_dims(proto, input_shapes, notes)
    note_dynamic_dims(proto, notes)
    proto = infer_shapes(proto, notes)
    return proto, notes


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (old exports also list initializers as inputs)."""
    inits = {t.name for t in graph.initializer}
    return [vi for vi in graph.input if vi.name not in inits]


def default_opset(proto: onnx.ModelProto) -> int | None:
    """The ai.onnx opset version the model imports, or None."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_ir(proto: onnx.ModelProto, notes: list[str]) -> None:
    """Raise IR < 4 to 4, taking initializers out of the graph inputs, in place.

    IR 3 required every initializer to be listed as a graph input too, so every pass that adds a
    weight would have to list it as well. ORT never let a caller override those inputs of an IR 3 model,
    so dropping them from the inputs changes nothing it runs.
    """
    if proto.ir_version >= 4:
        return
    inits = {t.name for t in proto.graph.initializer}
    kept = [vi for vi in proto.graph.input if vi.name not in inits]
    dropped = len(proto.graph.input) - len(kept)
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    notes.append(f"upgraded IR {proto.ir_version} -> 4 ({dropped} initializers are no longer listed as inputs)")
    proto.ir_version = 4


def needs_opset_upgrade(proto: onnx.ModelProto) -> bool:
    """Whether normalize would try to convert the model's opset."""
    version = default_opset(proto)
    return version is not None and version < MIN_OPSET


def upgrade_opset(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Convert models below opset 13 to 17; if the converter fails, keep the model and say so."""
    version = default_opset(proto)
    if version is None or version >= MIN_OPSET:
        return proto
    try:
        upgraded = version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as err:  # the C++ converter raises RuntimeError, ValueError or its own types
        reason = _CXX_PREFIX.sub("", str(err).strip().splitlines()[0]) if str(err).strip() else type(err).__name__
        logger.info("opset %d kept: version converter failed (%s)", version, reason)
        notes.append(f"kept opset {version}: the version converter failed ({reason})")
        return proto
    changed = _signature_change(proto, upgraded)
    if changed:
        logger.info("opset %d kept: the version converter changed %s", version, changed)
        notes.append(f"kept opset {version}: the version converter changed {changed}")
        return proto
    notes.append(f"upgraded opset {version} -> {TARGET_OPSET}")
    return upgraded


def _signature(graph: onnx.GraphProto) -> dict[str, tuple[int, int]]:
    """Name -> (element type, rank) of the inputs fed at run time and of the outputs."""
    return {vi.name: (vi.type.tensor_type.elem_type, len(vi.type.tensor_type.shape.dim))
            for vi in [*real_inputs(graph), *graph.output]}


def _signature_change(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    """What an opset conversion changed in the model's interface ('' if nothing).

    A conversion must not: the converter's Scan 8 -> 9 adapter, for one, drops the batch axis from
    the model's inputs, and the converted model no longer takes the data the original took.
    """
    old, new = _signature(before.graph), _signature(after.graph)
    for name, (dtype, rank) in old.items():
        if name not in new:
            return f"the model's interface ({name!r} is gone)"
        if new[name] != (dtype, rank):
            return f"{name!r} from rank {rank} to rank {new[name][1]}" if new[name][0] == dtype \
                else f"the element type of {name!r}"
    return ""


def fix_input_dims(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], notes: list[str]) -> None:
    """Set the given shapes on the model's inputs; symbols fixed on inputs are fixed everywhere."""
    inputs = {vi.name: vi for vi in real_inputs(proto.graph)}
    unknown = [name for name in shapes if name not in inputs]
    if unknown:
        raise ConfigError(f"--input-shape {unknown[0]}: the model has no input named {unknown[0]!r}; "
                          f"its inputs are: {', '.join(inputs) or '(none)'}")
    symbols: dict[str, int] = {}
    for name, shape in shapes.items():
        fixed = _fix_one(inputs[name], shape, symbols)
        if fixed:
            notes.append(f"fixed dim {', '.join(fixed)} on input {name}")
    if symbols:
        _apply_symbols(proto.graph, symbols)


def _fix_one(vi: onnx.ValueInfoProto, shape: tuple[int, ...], symbols: dict[str, int]) -> list[str]:
    """Fix one input's dims in place; returns 'label=value' for each dim that was not fixed before."""
    given = f"--input-shape {vi.name}={'x'.join(map(str, shape))}"
    if not vi.type.HasField("tensor_type"):
        raise ConfigError(f"{given}: input {vi.name!r} is not a tensor")
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in shape)
    dims = tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ConfigError(f"{given}: rank {len(shape)}, but input {vi.name!r} has rank {len(dims)} "
                          f"({format_dims(dims)})")
    fixed = []
    for axis, (dim, want) in enumerate(zip(dims, shape, strict=True)):
        if dim.HasField("dim_value"):
            if dim.dim_value != want:
                raise ConfigError(f"{given}: axis {axis} of input {vi.name!r} is fixed at {dim.dim_value}")
            continue
        label = dim.dim_param or f"dim{axis}"
        if dim.dim_param:
            symbols[dim.dim_param] = want
        dim.dim_value = want  # setting the value clears dim_param (a oneof)
        fixed.append(f"{label}={want}")
    return fixed


def _apply_symbols(graph: onnx.GraphProto, symbols: dict[str, int]) -> None:
    """Give outputs and value_info the values now fixed on inputs, so no stale symbol disagrees."""
    for vi in [*graph.output, *graph.value_info]:
        if not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in symbols:
                dim.dim_value = symbols[dim.dim_param]


def note_dynamic_dims(proto: onnx.ModelProto, notes: list[str]) -> None:
    """Say which input dims are still dynamic; they are left alone (a runtime may accept them)."""
    for vi in real_inputs(proto.graph):
        if not vi.type.HasField("tensor_type"):
            continue
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape"):
            notes.append(f"input {vi.name} has no shape; --input-shape {vi.name}=... fixes it")
            continue
        dynamic = [f"{axis} ({d.dim_param or '?'})" for axis, d in enumerate(tensor_type.shape.dim)
                   if not d.HasField("dim_value")]
        if dynamic:
            notes.append(f"input {vi.name} dim {', '.join(dynamic)} still dynamic; "
                         f"--input-shape {vi.name}=... fixes it")


def infer_shapes(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """ONNX shape inference; on failure keep the model's own shapes and say so.

    Strict first: when the model's value_info contradicts what its graph computes (a shape or type
    inference derives otherwise), the declarations are dropped and inferred again, since a pass that
    trusts them (constant folding, a Concat input declared empty) would change what the model computes.
    Otherwise not strict, as before. What normalizing did reaches the user as notes (the build summary,
    inspect), so it is logged at INFO: a warning on stderr would be a second line next to a later error.
    """
    try:
        return _infer(proto, strict=True)
    except Exception as err:  # noqa: BLE001 - the C++ inference raises InferenceError, ValueError (too large)...
        conflict = next((line.strip() for line in str(err).splitlines() if "differ" in line), "")
    if conflict:
        declared = list(proto.graph.value_info)
        del proto.graph.value_info[:]
        try:
            inferred = _infer(proto, strict=False)
        except Exception:  # noqa: BLE001
            inferred = None
        proto.graph.value_info.extend(declared)
        if inferred is not None:
            logger.info("value_info contradicts the graph: %s", conflict)
            notes.append(f"the model's value_info contradicts its graph ({conflict}); shapes inferred without it")
            return inferred
    try:
        return _infer(proto, strict=False)
    except Exception as err:  # the C++ inference raises InferenceError, ValueError (too large)...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.info("shape inference failed: %s", reason)
        notes.append(f"shape inference failed ({reason}); kept the shapes the model had")
        return proto


def _infer(proto: onnx.ModelProto, strict: bool) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=strict, data_prop=True)


def format_dims(dims: Iterable[onnx.TensorShapeProto.Dimension]) -> str:
    """'1x3xbatchx?' for a list of dims."""
    parts = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return "x".join(parts) or "scalar"


def drop_contradicted_output_shapes(proto: onnx.ModelProto, outputs: dict[str, object]) -> list[str]:
    """Clear declared output shapes that the model's own run contradicts, in place; what was cleared.

    Exporters sometimes declare an output shape the graph does not compute (ddddocr declares
    [1, seqlen] for a [T, 1, 8210] output). ORT runs such a model fine, but a rewrite that trusts the
    declaration (constant folding a Reshape's target shape from it) changes what the model computes.
    The value_info derived from the declarations goes too, and shape inference runs again. The output keeps
    the rank it computes, with every dim unknown.
    """
    notes = []
    for vi in proto.graph.output:
        actual = getattr(outputs.get(vi.name), "shape", None)
        if actual is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(actual) or any(d.HasField("dim_value") and d.dim_value != a
                                           for d, a in zip(dims, actual, strict=True)):
            notes.append(f"output {vi.name} is declared {format_dims(dims)} but the model computes "
                         f"{'x'.join(map(str, actual)) or 'a scalar'}: the declared shape was dropped")
            # Unknown dims of the computed rank, not no shape: the checker requires a graph output's shape field.
            del dims[:]
            dims.extend(onnx.TensorShapeProto.Dimension() for _ in actual)
    if notes:
        del proto.graph.value_info[:]
        inferred = infer_shapes(proto, notes)
        if inferred is not proto:
            proto.CopyFrom(inferred)
    return notes
