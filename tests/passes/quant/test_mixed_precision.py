"""mixed-precision: per-node precision maps, the choices a target offers, real ORT numbers, and user errors."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from helpers import build_with_config

from edgec.compiler.pipeline import run_pipeline
from edgec.core.errors import ConfigError, PrecisionError
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.quant.mixed_precision import MixedPrecisionPass
from edgec.runtime.session import compare_outputs, make_session, run
from edgec.targets.registry import get_target

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[4, 64] x) => (float[4, 32] y) <float[64, 64] w1, float[64, 32] w2> {
    h = MatMul(x, w1)
    r = Relu(h)
    y = MatMul(r, w2)
}
"""


def _mlp() -> onnx.ModelProto:
    model = onnx.parser.parse_model(MLP)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (64, 64)), ("w2", (64, 32))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) / 8).astype(np.float32), name))
    model.graph.node[0].name, model.graph.node[2].name = "mm1", "mm2"
    return model


def _cosine(reference: onnx.ModelProto, model: onnx.ModelProto, feeds: list) -> float:
    before = [run(make_session(reference.SerializeToString()), f) for f in feeds]
    after = [run(make_session(model.SerializeToString()), f) for f in feeds]
    return compare_outputs(before, after)[0].cosine


def _mixed(proto: onnx.ModelProto, target: str, feeds: list, options: dict):
    ctx = BuildContext(get_target(target), feeds)
    result = run_pipeline(proto, [create_pass("mixed-precision", ctx, options)], ctx)
    return result.model, result.records[0]


@pytest.fixture(scope="module")
def mnist():
    zoo = get_zoo_model("mnist-resnet")
    return onnx.load(str(zoo.onnx_path())), zoo.calibration(8), zoo.calibration(16, "eval")


def test_node_choices_follow_the_target(mnist):
    proto, _, _ = mnist
    cpu = MixedPrecisionPass.node_choices(proto, get_target("cpu-x86"))
    gpu = MixedPrecisionPass.node_choices(proto, get_target("cuda"))
    convs = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert list(cpu) == convs and len(cpu) == 10
    assert set(cpu.values()) == {("int8", "fp32")}  # cpu-x86 lists no fp16/fp8 format
    assert set(gpu.values()) == {("int8", "fp16", "fp8", "fp32")}
    mlp = MixedPrecisionPass.node_choices(_mlp(), get_target("cpu-x86"))
    assert mlp == {"mm1": ("int8", "int4", "fp32"), "mm2": ("int8", "int4", "fp32")}


def test_fp32_nodes_put_cosine_between_all_int8_and_fp32(mnist):
    proto, calib, feeds = mnist
    names = list(MixedPrecisionPass.node_choices(proto, get_target("cpu-x86")))
    all_int8, record = _mixed(proto, "cpu-x86", calib, {})
    assert record.stats["nodes_by_precision"] == {"int8": 10}
    # the stem and the first block hold most of the int8 error of this ResNet
    mixed, record = _mixed(proto, "cpu-x86", calib, {"precisions": {n: "fp32" for n in names[:4]}})
    assert record.stats["nodes_by_precision"] == {"int8": 6, "fp32": 4}
    float_weights = {t.name for t in mixed.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    weight_of = {n.name: n.input[1] for n in mixed.graph.node if n.name in names}
    assert {n for n, w in weight_of.items() if w in float_weights} == set(names[:4])
    int8_cos, mixed_cos = _cosine(proto, all_int8, feeds), _cosine(proto, mixed, feeds)
    assert 0.995 < int8_cos < mixed_cos < 1.0, (int8_cos, mixed_cos)


def test_default_fp32_with_one_int8_node(mnist):
    proto, calib, feeds = mnist
    last = list(MixedPrecisionPass.node_choices(proto, get_target("cpu-x86")))[-1]
    model, record = _mixed(proto, "cpu-x86", calib, {"default": "fp32", "precisions": {last: "int8"}})
    assert record.stats["nodes_by_precision"] == {"int8": 1, "fp32": 9}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    # one Gemm: its weight, input and output are quantized, nothing else
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4, ops
    assert _cosine(proto, model, feeds) > 0.998  # the logits themselves pass a Q/DQ


def test_every_precision_on_the_cuda_target(mnist):
    proto, calib, feeds = mnist
    names = list(MixedPrecisionPass.node_choices(proto, get_target("cuda")))
    chosen = {names[0]: "fp16", names[1]: "fp8", names[2]: "fp32", names[3]: "fp16", names[-1]: "fp8"}
    model, record = _mixed(proto, "cuda", calib, {"precisions": chosen})
    assert record.stats["nodes_by_precision"] == {"int8": 5, "fp16": 2, "fp8": 2, "fp32": 1}
    assert record.stats["fp8"]["weights"] == 2 and record.stats["fp16"]["nodes"] == 2
    inits = {t.name: t.data_type for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    assert inits[nodes[names[0]].input[1]] == onnx.TensorProto.FLOAT16
    assert sum(n.op_type == "Cast" for n in model.graph.node) == 4  # one in, one out per fp16 conv
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    onnx.checker.check_model(model)
    assert _cosine(proto, model, feeds) > 0.999


def test_int4_and_int8_matmuls():
    proto = _mlp()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(8)]
    model, record = _mixed(proto, "cpu-x86", calib, {"precisions": {"mm1": "int4"}})
    assert record.stats["nodes_by_precision"] == {"int8": 1, "int4": 1}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == 1 and ops["MatMul"] == 0, ops  # mm2: dynamic int8 (a Conv-free graph)
    assert _cosine(proto, model, calib) > 0.99


@pytest.mark.parametrize(("options", "error", "fragment"), [
    ({"precisions": {"mm1": "int3"}}, ConfigError, "precisions.mm1: 'int3' is not one of"),
    ({"default": "bf16"}, ConfigError, "default: 'bf16'"),
    ({"precisions": {"nope": "int8"}}, ConfigError, "no node named 'nope'"),
    ({"precisions": {"r": "int8"}}, ConfigError, "Relu nodes take no per-node precision"),
    ({"precisions": {"mm1": "fp8"}}, PrecisionError, "target cpu-x86 does not run fp8-qdq"),
])
def test_bad_maps_name_the_node(options, error, fragment):
    proto = _mlp()
    proto.graph.node[1].name = "r"
    calib = [{"x": np.ones((4, 64), np.float32)}] * 2
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        _mixed(proto, "cpu-x86", calib, options)


def test_int4_on_a_conv_is_refused(mnist):
    proto, calib, _ = mnist
    first = next(n.name for n in proto.graph.node if n.op_type == "Conv")
    with pytest.raises(ConfigError, match=f"{first}: int4 does not apply"):
        _mixed(proto, "cpu-x86", calib[:2], {"precisions": {first: "int4"}})


@pytest.mark.parametrize(("table", "fragment"), [
    ('node_Conv_133 = "int3"', "'int3' is not one of"),
    ('no_such_node = "fp32"', "no node named 'no_such_node'"),
])
def test_cli_bad_map_exits_2_with_one_line(tmp_path, table, fragment):
    toml = ('model = "zoo:mnist-resnet"\ntarget = "cpu-x86"\npasses = ["mixed-precision"]\n'
            f"[pass-options.mixed-precision.precisions]\n{table}\n")
    result, out = build_with_config(tmp_path, toml)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
