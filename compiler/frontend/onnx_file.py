"""ONNX file frontend: parse a .onnx file and load its external data only from inside its folder."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import numpy as np
import onnx
import onnx.numpy_helper
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

from edgec.compiler.frontend._proto_checks import check_fields, check_passthrough_outputs, check_raw_size
from edgec.core.errors import ModelLoadError

logger = logging.getLogger(__name__)

# A ModelProto cannot be serialized past 2 GiB (protobuf limit), so bigger models keep their data on disk.
INLINE_LIMIT_BYTES = 2**31 - 1


def read_onnx(path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """Parse ``path``, check every external-data reference, then load the data unless it is over 2 GB.

    Over the limit, tensors keep pointing at files in ``path.parent``: the proto can then only be
    saved next to those files (or with the data re-written as external data), never serialized whole.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    proto = _parse(path)
    check_fields(path, proto)
    base_dir = path.parent
    external = [t for t in iter_tensors(proto) if uses_external_data(t)]
    data_bytes = sum(_check_external(path, base_dir, t) for t in external)
    if not external:
        _check_model(path, proto)
        return proto, []
    if path.stat().st_size + data_bytes > INLINE_LIMIT_BYTES:
        gib = (path.stat().st_size + data_bytes) / 2**30
        return proto, [f"kept external data of {len(external)} tensors on disk in {base_dir} "
                       f"({gib:.1f} GiB is over the 2 GB protobuf limit)"]
    try:
        load_external_data_for_model(proto, str(base_dir))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot read external data: {_first_line(err)}") from err
    _check_model(path, proto)
    return proto, [f"loaded external data of {len(external)} tensors from {base_dir}"]


def _parse(path: Path) -> onnx.ModelProto:
    """The ModelProto without external data, or ModelLoadError for text, truncated or empty files."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning-as-error, ValueError...
        reason = _first_line(err)
        raise ModelLoadError(f"{path}: not an ONNX model (protobuf parse failed: {reason})") from err
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model (no ir_version or no graph nodes; truncated?)")
    return proto


def _check_model(path: Path, proto: onnx.ModelProto) -> None:
    """Structural check (it catches files cut at a field boundary that still parse), and what it leaves out.

    Raw data of another size than its dims, and a graph output that is a graph input declared otherwise.
    """
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as err:
        raise ModelLoadError(f"{path}: invalid ONNX model: {_first_line(err)}") from err
    for tensor in iter_tensors(proto):
        check_raw_size(path, tensor)
    check_passthrough_outputs(path, proto)


def _check_external(path: Path, base_dir: Path, tensor: onnx.TensorProto) -> int:
    """Refuse absolute, escaping, missing or short external data; return the byte count it reads."""
    try:
        info = ExternalDataInfo(tensor)
    except ValueError as err:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: bad external data ({err})") from err
    loc = info.location
    where = f"{path}: tensor {tensor.name!r} external data {loc!r}"
    if not loc:
        raise ModelLoadError(f"{where}: no location given")
    if "\x00" in loc:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} external data location holds a NUL byte")
    if Path(loc).is_absolute() or PureWindowsPath(loc).is_absolute() or PureWindowsPath(loc).drive:
        raise ModelLoadError(f"{where} is an absolute path; external data must sit inside {base_dir}")
    target = (base_dir / loc).resolve()  # resolve() follows symlinks, so a link out is caught too
    if not target.is_relative_to(base_dir.resolve()):
        raise ModelLoadError(f"{where} points outside the model's folder {base_dir}")
    if not target.exists():
        raise ModelLoadError(f"{where}: external data file missing")
    status = target.stat()
    if not stat.S_ISREG(status.st_mode):
        raise ModelLoadError(f"{where} is not a regular file")
    # A hard link looks like any file of the folder but may be the same file as one outside it (a key,
    # another user's data): the folder's boundary means nothing for it, so it is refused.
    if status.st_nlink > 1:
        raise ModelLoadError(f"{where} is a hard link ({status.st_nlink} names for one file); external data "
                             "must be a plain file of the model's folder: copy it there")
    size = status.st_size
    offset = info.offset or 0
    length = info.length if info.length is not None else max(size - offset, 0)
    if offset + length > size:
        raise ModelLoadError(f"{where}: needs bytes {offset}..{offset + length} but the file has {size}")
    return length


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def nonfinite_weights(proto: onnx.ModelProto) -> list[str]:
    """One line per float tensor of the model that holds NaN or infinity, naming it and the counts."""
    found = []
    for tensor in iter_tensors(proto):
        if tensor.data_type not in _FLOAT_TYPES or uses_external_data(tensor):
            continue
        values = onnx.numpy_helper.to_array(tensor).astype(np.float32, copy=False)
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if nan or inf:
            found.append(f"weight {tensor.name!r} holds {nan} NaN and {inf} infinite values")
    return found


def iter_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers, sparse parts, attributes, subgraphs, functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
