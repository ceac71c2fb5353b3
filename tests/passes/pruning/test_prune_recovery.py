"""prune-channels recovery: bias compensation and ridge refits, checked on trained zoo models and tiny graphs."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnx_ir.passes.common as common
import pytest
import torch
from helpers import outputs

from edgec.compiler.pipeline import run_pipeline
from edgec.core.errors import ConfigError
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.pruning.channel_export import apply_plan, choose_orders
from edgec.passes.pruning.channel_graph import analyze
from edgec.passes.pruning.plan import make_plan
from edgec.passes.pruning.recovery import recover
from edgec.runtime.session import make_session
from edgec.targets.registry import get_target

CALIB, HELD_OUT = 64, 64
# Held-out relative MSE of the logits vs the full model, as a fraction of no recovery's, at ratio 0.5.
# Measured: bias 0.21 (digits) / 0.59 (mnist); lstsq 0.02 / 0.04.
BIAS_MAX, LSTSQ_MAX = 0.8, 0.2


@functools.cache
def _proto(name: str) -> bytes:
    return onnx.load(str(get_zoo_model(name).onnx_path())).SerializeToString()


def _output(data: bytes, feeds: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """Output ``name`` concatenated over the feeds."""
    return np.concatenate([o[name] for o in outputs(data, feeds)])


def _rel_mse(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean((got - ref) ** 2) / np.mean(ref**2))


@pytest.mark.parametrize("mode", ["constrained", "unconstrained"])
@pytest.mark.parametrize("name", ["digits-cnn", "mnist-resnet"])
def test_recovery_reduces_held_out_error(name, mode):
    zoo = get_zoo_model(name)
    held_out = zoo.calibration(HELD_OUT, "eval")
    ref = _output(_proto(name), held_out, zoo.output_name)
    err = {}
    for recovery in ("none", "bias", "lstsq"):
        ctx = BuildContext(get_target("cpu-x86"), zoo.calibration(CALIB))
        options = {"ratio": 0.5, "mode": mode, "recovery": recovery}
        result = run_pipeline(onnx.load_from_string(_proto(name)), [create_pass("prune-channels", ctx, options)], ctx)
        err[recovery] = _rel_mse(_output(result.model.SerializeToString(), held_out, zoo.output_name), ref)
        if recovery != "none":
            assert result.records[0].stats["recovered_layers"] > 0
    assert err["bias"] <= BIAS_MAX * err["none"], err
    assert err["lstsq"] <= LSTSQ_MAX * err["none"], err
    assert err["lstsq"] < err["bias"], err


def _pruned(model: ir.Model, ratio: float, mode: str):
    common.ShapeInferencePass()(model)
    original = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    cg = analyze(model)
    plan = make_plan(model, cg, lambda _: ratio, mode, "l2", 1)
    orders = choose_orders(cg, plan, reorder=True)
    apply_plan(model, cg, plan, orders, ("slice", "gather"))
    return original, cg, plan, orders


def _values(model: ir.Model, names: list[str], feeds) -> list[np.ndarray]:
    """Intermediate values, stacked over feeds, through an ORT session with them as extra outputs."""
    proto = ir.serde.serialize_model(model)
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = make_session(proto.SerializeToString(), level="disabled")
    return [np.concatenate(v) for v in zip(*[session.run(names, f) for f in feeds], strict=True)]


def test_bias_adds_the_removed_channels_mean_contribution():
    # The first consumer's kept inputs are unchanged, so its new bias must be b + E[conv(x_removed, W)].
    zoo = get_zoo_model("digits-cnn")
    feeds = zoo.calibration(CALIB)
    model = ir.serde.deserialize_model(onnx.load_from_string(_proto("digits-cnn")))
    original, cg, plan, orders = _pruned(model, 0.5, "unconstrained")
    first = cg.consumers[0]
    node = next(n for n in original.graph if n.name == first.node)
    x = torch.from_numpy(_values(original, [first.value], feeds)[0])
    removed = np.setdiff1d(np.arange(x.shape[1]), plan.reads[first.node])
    x_removed = torch.zeros_like(x)
    x_removed[:, removed] = x[:, removed]
    pads = tuple(node.attributes["pads"].value)
    weight = torch.from_numpy(node.inputs[1].const_value.numpy().copy())
    contribution = torch.nn.functional.conv2d(x_removed, weight, stride=tuple(node.attributes["strides"].value),
                                              padding=pads[:2]).mean((0, 2, 3)).numpy()
    expected = node.inputs[2].const_value.numpy() + contribution
    assert len(removed) > 0
    recover(model, original, cg, plan, orders, feeds, "bias", 0.01)
    pruned_node = next(n for n in model.graph if n.name == first.node)
    order = orders[cg.group(next(p.space for p in cg.producers if p.node == first.node))]
    np.testing.assert_allclose(pruned_node.inputs[2].const_value.numpy(), expected[order], rtol=1e-4, atol=1e-5)


def test_bias_matches_every_recovered_layers_output_mean():
    # Each wave is measured after earlier waves are fixed, so every layer's mean output must be the original's.
    zoo = get_zoo_model("mnist-resnet")
    feeds = zoo.calibration(16)
    model = ir.serde.deserialize_model(onnx.load_from_string(_proto("mnist-resnet")))
    original, cg, plan, orders = _pruned(model, 0.5, "unconstrained")
    fixed, skipped = recover(model, original, cg, plan, orders, feeds, "bias", 0.01)
    assert fixed == len(cg.consumers) and not skipped
    outs = {n.name: n.outputs[0].name for n in model.graph}
    names = [outs[c.node] for c in cg.consumers]
    before, after = _values(original, names, feeds), _values(model, names, feeds)
    for c, y0, y1 in zip(cg.consumers, before, after, strict=True):
        order = orders[cg.group(next(p.space for p in cg.producers if p.node == c.node))]
        axes = (0, 2, 3) if y0.ndim == 4 else 0
        want = y0.mean(axes)[order]
        np.testing.assert_allclose(y1.mean(axes), want, atol=1e-4 * max(1.0, np.abs(want).max()), err_msg=c.node)


_MLP = """
<ir_version: 8, opset_import: ["": 18]>
g (float[1, 6, 8] x) => (float[1, 6, 8] y) {{
    h = MatMul(x, w1)
    a = Relu(h)
    m = MatMul(a, w2)
    y = {tail}
}}"""


def _mlp(tail: str) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(_MLP.format(tail=tail))
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (8, 32)), ("w2", (32, 8)), ("b", (8,))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32),
                                                                    name))
    return proto


@pytest.mark.parametrize(("tail", "adds"), [("Add(m, b)", 0), ("Relu(m)", 1)])
def test_matmul_offset_goes_into_its_bias_add_or_a_new_add(tail, adds):
    proto = _mlp(tail)
    rng = np.random.default_rng(1)
    feeds = [{"x": (rng.standard_normal((1, 6, 8)) + 1.0).astype(np.float32)} for _ in range(32)]
    ref = _output(proto.SerializeToString(), feeds, "y")
    err = {}
    for recovery in ("none", "bias", "lstsq"):
        ctx = BuildContext(get_target("cpu-x86"), feeds)
        result = run_pipeline(proto, [create_pass("prune-channels", ctx, {"ratio": 0.5, "recovery": recovery})], ctx)
        ops = [n.op_type for n in result.model.graph.node]
        assert ops.count("Add") == tail.startswith("Add") + (adds if recovery != "none" else 0), ops
        err[recovery] = _rel_mse(_output(result.model.SerializeToString(), feeds, "y"), ref)
    assert err["lstsq"] < err["bias"] < err["none"], err


@pytest.mark.parametrize(("options", "fragment"), [
    ({"recovery": "magic"}, "recovery must be one of"),
    ({"ridge": 0.0}, "ridge must be a number > 0"),
    ({"ridge": True}, "ridge must be a number > 0"),
])
def test_bad_recovery_options_are_refused(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_pass("prune-channels", BuildContext(get_target("cpu-x86")), options)


def test_recovery_without_calibration_is_skipped_with_a_reason():
    ctx = BuildContext(get_target("cpu-x86"))
    proto = onnx.load_from_string(_proto("digits-cnn"))
    record = run_pipeline(proto, [create_pass("prune-channels", ctx, {"ratio": 0.5, "recovery": "bias"})],
                          ctx).records[0]
    assert record.modified
    assert any(s["where"] == "recovery" and "no calibration data" in s["reason"] for s in record.skips)
