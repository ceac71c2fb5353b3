"""Builders of small valid inputs that the corpus then breaks: a tiny CNN, its calibration data, a bundle."""

from __future__ import annotations

import io
import pathlib
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = (1, 3, 8, 8)


def tiny_graph(weight: np.ndarray | None = None) -> onnx.GraphProto:
    """Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->2)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) if weight is None else weight
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    return helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT_SHAPE)],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)


def tiny_model(graph: onnx.GraphProto | None = None, opset: int = 17, ir_version: int = 8) -> onnx.ModelProto:
    model = helper.make_model(graph or tiny_graph(), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(model.SerializeToString())
    return path


def calibration(n: int = 4, seed: int = 0) -> np.ndarray:
    """``n`` samples of the tiny CNN's input, stacked on a new leading axis."""
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE)).astype(np.float32)


def write_calib(path: pathlib.Path, **arrays: np.ndarray) -> pathlib.Path:
    np.savez(path, **(arrays or {"x": calibration()}))
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An .npy file whose header declares ``shape`` and that holds no data at all."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def zip_with(path: pathlib.Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> pathlib.Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_bomb(path: pathlib.Path, member: str, size: int = 1 << 30, header: bytes = b"") -> pathlib.Path:
    """A zip whose one member inflates to ``size`` bytes of zeros (about 1 MB on disk), after ``header``."""
    chunk = bytes(1 << 24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(member, "w", force_zip64=True) as out:
        out.write(header)
        for _ in range(size // len(chunk)):
            out.write(chunk)
    return path
