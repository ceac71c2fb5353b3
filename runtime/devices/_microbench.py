"""Single-op micro-models at the op types and shapes the zoo uses, in fp32, fp16 and int8 QDQ."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

log = logging.getLogger(__name__)

# Ops that carry most of the time in the zoo's CNNs and transformers.
SWEEP_OPS = ("Conv", "MatMul", "Gemm", "Softmax", "LayerNormalization", "Add", "Mul", "GlobalAveragePool",
             "ReduceMean", "MaxPool", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Erf")
# Ops ORT quantizes in QDQ form; the others have no int8 kernel worth sweeping.
QDQ_OPS = ("Conv", "MatMul", "Gemm")
SMALL_CONSTANT = 64  # constants up to this many elements (axes, clip bounds) keep their real values
OPSET = 17


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op occurrence: inputs as (name, shape, dtype, constant value or None), attributes, source."""

    op_type: str
    inputs: tuple[tuple[str, tuple[int, ...], int, TensorProto | None], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    attributes: tuple[onnx.AttributeProto, ...]
    source: str
    opset: int = OPSET  # the source model's: an op's inputs change between opsets (ReduceMean's axes)

    def key(self) -> str:
        """Shapes and attributes that set the op's cost (weights marked ``w``)."""
        parts = [("w" if c is not None else "x") + "x".join(map(str, s)) for _, s, _, c in self.inputs]
        attrs = {a.name: helper.get_attribute_value(a) for a in self.attributes}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        return f"{self.op_type}|{','.join(parts)}|{json.dumps(attrs, sort_keys=True)}"

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for the device file."""
        return {"op_type": self.op_type, "source_model": self.source,
                "inputs": [{"shape": list(s), "dtype": helper.tensor_dtype_to_np_dtype(t).name,
                            "constant": c is not None} for _, s, t, c in self.inputs],
                "output_shapes": [list(s) for s in self.output_shapes],
                "attributes": json.loads(self.key().split("|", 2)[2])}


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    inferred = shape_inference.infer_shapes(model)
    found = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        if tt.HasField("shape") and all(d > 0 for d in dims):
            found[vi.name] = (dims, tt.elem_type)
    return found


def _constants(model: onnx.ModelProto) -> dict[str, TensorProto]:
    consts = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    return consts


def specs_from_model(model: onnx.ModelProto, source: str, ops: Sequence[str] = SWEEP_OPS) -> list[OpSpec]:
    """Every node of ``ops`` with fully static input and output shapes (others are skipped)."""
    shapes, consts = _static_shapes(model), _constants(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    for init in model.graph.initializer:
        shapes.setdefault(init.name, (tuple(init.dims), init.data_type))
    specs = []
    for node in model.graph.node:
        names = [n for n in node.input if n]
        if node.op_type not in ops or not all(n in shapes for n in (*names, *node.output)):
            continue
        inputs = tuple((f"in{i}", shapes[n][0], shapes[n][1], consts.get(n)) for i, n in enumerate(names))
        specs.append(OpSpec(node.op_type, inputs, tuple(shapes[o][0] for o in node.output),
                            tuple(node.attribute), source, opset))
    return specs


def collect_specs(models: Iterable[tuple[str, onnx.ModelProto]], max_per_op: int) -> list[OpSpec]:
    """Distinct (op, shapes, attributes) across models, at most ``max_per_op`` per op type, spread by size."""
    by_op: dict[str, dict[str, OpSpec]] = {}
    for source, model in models:
        for spec in specs_from_model(model, source):
            by_op.setdefault(spec.op_type, {}).setdefault(spec.key(), spec)
    chosen = []
    for op in SWEEP_OPS:
        found = sorted(by_op.get(op, {}).values(), key=lambda s: sum(int(np.prod(i[1])) for i in s.inputs))
        if len(found) > max_per_op:  # evenly spaced from smallest to largest
            picks = np.linspace(0, len(found) - 1, max_per_op).round().astype(int)
            found = [found[i] for i in sorted(set(picks.tolist()))]
        chosen += found
    return chosen


def _weight(name: str, shape: tuple[int, ...], dtype: int, const: TensorProto, rng: np.random.Generator):
    if int(np.prod(shape)) <= SMALL_CONSTANT:
        real = onnx.TensorProto()
        real.CopyFrom(const)
        real.name = name
        return real
    scale = 1.0 / np.sqrt(max(1, int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]))
    values = rng.standard_normal(shape) * scale
    return numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(dtype)), name)


def build_fp32(spec: OpSpec, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model (constants as initializers, the rest as inputs) and seeded random feeds."""
    rng = np.random.default_rng(seed)
    inputs, inits, feeds = [], [], {}
    for name, shape, dtype, const in spec.inputs:
        if const is not None:
            inits.append(_weight(name, shape, dtype, const, rng))
            continue
        inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        feeds[name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(dtype))
    outputs = [helper.make_tensor_value_info(f"out{i}", TensorProto.UNDEFINED, list(s))
               for i, s in enumerate(spec.output_shapes)]
    node = helper.make_node(spec.op_type, [i[0] for i in spec.inputs], [o.name for o in outputs], name="op")
    node.attribute.extend(spec.attributes)
    graph = helper.make_graph([node], spec.op_type.lower(), inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)])
    model.ir_version = 8
    model = shape_inference.infer_shapes(model)
    for out in model.graph.output:
        if out.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            out.type.tensor_type.elem_type = TensorProto.FLOAT
    return model, feeds


def to_fp16(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """Every float32 tensor (inputs, outputs, initializers) as float16; a one-node graph needs no casts."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for vi in (*half.graph.input, *half.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    for i, init in enumerate(half.graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            half.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    del half.graph.value_info[:]
    return half, {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}


def to_int8_qdq(model: onnx.ModelProto, feeds: dict[str, np.ndarray], activation_dtype: str) -> onnx.ModelProto:
    """ORT's own static QDQ quantizer (per-channel int8 weights), calibrated on a few random feeds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self._it = iter([feeds] + [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in feeds.items()}
                                       for _ in range(3)])

        def get_next(self):
            return next(self._it, None)

    act = QuantType.QUInt8 if activation_dtype == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="edgec-qdq-") as tmp:
        src, dst = pathlib.Path(tmp, "fp32.onnx"), pathlib.Path(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, activation_type=act,
                        weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(dst)
