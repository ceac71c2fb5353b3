"""prune-channels: exactness of the dependency analysis and export on every zoo model, in both modes."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnx_ir.passes.common as common
import pytest
from helpers import outputs

from edgec.compiler.pipeline import run_pipeline
from edgec.core.errors import CalibrationError, ConfigError, UnsupportedOpError
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.pruning.channel_export import apply_plan, choose_orders
from edgec.passes.pruning.channel_graph import analyze
from edgec.passes.pruning.plan import make_plan, zero_pruned
from edgec.runtime.session import compare_outputs
from edgec.targets.registry import get_target

ZOO = ["resnet18", "resnet50", "mobilenetv2", "mobilenetv3-large", "densenet121", "efficientnet-b0",
       "bert-like", "digits-cnn", "mnist-resnet", "minilm"]
MODES = ["constrained", "unconstrained"]
# (mode, allocation) of every plan kind: unconstrained reads chosen per group's MAC budget or per consumer.
PLANS = [("constrained", "budgeted"), ("unconstrained", "budgeted"), ("unconstrained", "per-consumer"),
         ("constrained", "global"), ("unconstrained", "global")]
# Zeroed channels contribute exact zeros; only summation order differs after pruning.
ZERO_RTOL = 1e-5


@functools.cache
def _proto(name: str) -> bytes:
    return onnx.load(str(get_zoo_model(name).onnx_path())).SerializeToString()


def _ir(name: str) -> ir.Model:
    model = ir.serde.deserialize_model(onnx.load_from_string(_proto(name)))
    common.ShapeInferencePass()(model)
    return model


def _prune_zeroed(name: str, mode: str, ratio: float, kinds: tuple[str, ...], naive: bool = False,
                  allocation: str = "per-consumer", rounding: str = "up"):
    """Outputs of the model with the plan's channels zeroed, and of the same model pruned by that plan."""
    model = _ir(name)
    cg = analyze(model)
    plan = make_plan(model, cg, lambda _: ratio, mode, "l2", 16, allocation=allocation, rounding=rounding)
    zero_pruned(model, cg, plan)
    feeds = get_zoo_model(name).calibration(2)
    zeroed = outputs(model, feeds, check=True)
    selections = apply_plan(model, cg, plan, choose_orders(cg, plan, reorder=not naive), kinds, naive=naive)
    return zeroed, outputs(model, feeds, check=True), selections


@pytest.mark.parametrize(("mode", "allocation"), PLANS)
@pytest.mark.parametrize("name", ZOO)
def test_pruning_zeroed_channels_changes_nothing(name, mode, allocation):
    zeroed, pruned, selections = _prune_zeroed(name, mode, 0.5, ("slice", "gather"), allocation=allocation)
    for err in compare_outputs(zeroed, pruned):
        assert err.max_rel <= ZERO_RTOL, (name, mode, allocation, err)
    if mode == "constrained":
        assert {s.kind for s in selections} == {"none"}
    assert any(s.channels < s.of for s in selections), "the plan pruned nothing"


@pytest.mark.parametrize("name", ["resnet50", "bert-like"])
def test_dithered_rounding_prunes_exactly_what_it_zeroes(name):
    zeroed, pruned, selections = _prune_zeroed(name, "constrained", 0.37, ("slice", "gather"), rounding="dithered")
    for err in compare_outputs(zeroed, pruned):
        assert err.max_rel <= ZERO_RTOL, (name, err)
    kept = [s.channels for s in selections if s.channels < s.of]
    assert kept and all(k % 16 == 0 for k in kept)  # still whole channel multiples for the kernels


@pytest.mark.parametrize(("name", "kinds", "naive"), [
    ("resnet18", ("slice",), False),  # a target without Gather: Slice+Concat of ranges
    ("mobilenetv3-large", ("slice", "gather"), True),  # the naive export: Gather for every selection
])
def test_selection_variants_are_exact(name, kinds, naive):
    zeroed, pruned, selections = _prune_zeroed(name, "unconstrained", 0.5, kinds, naive)
    for err in compare_outputs(zeroed, pruned):
        assert err.max_rel <= ZERO_RTOL, err
    used = {s.kind for s in selections} - {"none"}
    assert used == ({"gather"} if naive else {"slice", "slices"}), used


def _pipeline(name: str, **options):
    ctx = BuildContext(get_target("cpu-x86"), get_zoo_model(name).calibration(1))
    proto = onnx.load_from_string(_proto(name))
    return run_pipeline(proto, [create_pass("prune-channels", ctx, options)], ctx).records[0]


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenetv3-large", "bert-like"])
def test_ratio_zero_is_bit_exact(name):
    record = _pipeline(name, ratio=0.0)
    assert not record.modified
    assert record.max_rel_error == 0.0
    assert record.after == record.before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ZOO)
def test_thirty_percent_passes_checker_and_ort(name, mode):
    # run_pipeline runs the ONNX checker and an ORT session on the result (50% is covered above).
    record = _pipeline(name, ratio=0.3, mode=mode)
    assert record.modified
    assert record.after["flops"] < record.before["flops"]
    assert record.after["params"] < record.before["params"]
    assert record.stats["channels_after"] < record.stats["channels_before"]
    assert -1.0 <= record.min_cosine <= 1.0


def test_reordering_turns_gathers_into_slices():
    record = _pipeline("resnet50", ratio=0.5, mode="unconstrained", allocation="per-consumer")
    stats = record.stats
    assert stats["gather_bytes_after"] < stats["gather_bytes_before"] / 1.5, stats
    assert stats["selections"].get("slice", 0) > 0


def test_frozen_groups_name_the_node():
    ctx = BuildContext(get_target("cpu-x86"), get_zoo_model("bert-like").calibration(1))
    proto = onnx.load_from_string(_proto("bert-like"))
    record = run_pipeline(proto, [create_pass("prune-channels", ctx, {"ratio": 0.5})], ctx).records[0]
    where = {s["where"] for s in record.skips}
    assert "node_view (Reshape)" in where  # attention heads: Q/K/V reshaped into heads
    # The hidden state a LayerNorm normalizes keeps its channels (consumers may still read fewer).
    assert "node_layer_norm (LayerNormalization): output channels not tracked" in where
    assert record.after["flops"] < record.before["flops"]  # the FFN hidden dim is pruned


def test_layer_override_keeps_that_layer():
    model = _ir("resnet18")
    cg = analyze(model)
    target = cg.consumers[3].node
    plan = make_plan(model, cg, lambda node: 0.0 if node == target else 0.5, "unconstrained", "l2", 16)
    assert len(plan.reads[target]) == cg.width(cg.consumers[3].layout)
    assert len(plan.reads[cg.consumers[4].node]) < cg.width(cg.consumers[4].layout)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_ratio_outside_range_is_refused(ratio):
    ctx = BuildContext(get_target("cpu-x86"))
    with pytest.raises(ConfigError, match="ratio"):
        create_pass("prune-channels", ctx, {"ratio": ratio})
    with pytest.raises(ConfigError, match="layers.conv1"):
        create_pass("prune-channels", ctx, {"layers": {"conv1": ratio}})
    with pytest.raises(ConfigError, match="heads"):
        create_pass("prune-channels", ctx, {"heads": ratio})


def test_heads_option_prunes_attention_through_the_pass():
    record = _pipeline("bert-like", ratio=0.0, heads=0.25)
    assert record.modified
    assert (record.stats["heads_before"], record.stats["heads_after"]) == (72, 54)
    assert record.after["flops"] < record.before["flops"]


def test_heads_option_on_a_cnn_prunes_only_channels():
    record = _pipeline("mnist-resnet", ratio=0.3, heads=0.5, importance="activation")
    assert record.modified and (record.stats["attention_blocks"], record.stats["heads_before"]) == (0, 0)


def test_activation_importance_needs_calibration():
    ctx = BuildContext(get_target("cpu-x86"))
    with pytest.raises(CalibrationError, match="importance = activation needs calibration"):
        run_pipeline(onnx.load_from_string(_proto("digits-cnn")),
                     [create_pass("prune-channels", ctx, {"importance": "activation"})], ctx)


def test_unknown_layer_name_is_refused():
    with pytest.raises(ConfigError, match="no node named 'nope'"):
        _pipeline("digits-cnn", layers={"nope": 0.5})


def test_model_with_nothing_prunable_is_refused():
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["": 18]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 3, 1, 1] w = {1,2,3,4,5,6,7,8,9,10,11,12}> {
            c = Conv(x, w)
            y = Relu(c)
        }""")
    ctx = BuildContext(get_target("cpu-x86"), [{"x": np.ones((1, 3, 8, 8), np.float32)}])
    with pytest.raises(UnsupportedOpError, match="nothing prunable"):
        run_pipeline(proto, [create_pass("prune-channels", ctx, {"ratio": 0.5})], ctx)
