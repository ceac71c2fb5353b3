"""Target profiles load from data, unknown names are refused, and node placement follows the EP tables."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgec.compiler.errors import TargetError
from edgec.targets.profile import TargetProfile
from edgec.targets.registry import all_targets, get_target
from edgec.targets.support import fallback_nodes, place_nodes, unrunnable_nodes

EXPECTED = {"cpu-x86", "cuda", "tensorrt", "android-arm64", "ios-arm64"}


def _model(nodes, inputs, outputs, opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports)


def _vi(name, dtype=TensorProto.FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_all_profiles_load_with_their_eps():
    profiles = all_targets()
    assert set(profiles) == EXPECTED
    assert profiles["android-arm64"].ep_names[0] == "NnapiExecutionProvider"
    assert profiles["android-arm64"].is_mobile and not profiles["cpu-x86"].is_mobile
    assert all(p.ep_names[-1] == "CPUExecutionProvider" for p in profiles.values())


def test_unknown_target_lists_valid_ones():
    with pytest.raises(TargetError, match="unknown target 'pixel9'.*android-arm64.*cpu-x86"):
        get_target("pixel9")


def test_profile_rejects_unknown_key():
    data = get_target("cpu-x86").to_json()
    data["channel_multipel"] = 8
    with pytest.raises(TargetError, match="x.toml: unknown key 'channel_multipel'"):
        TargetProfile.from_dict(data, source="x.toml")


def test_gelu_falls_back_to_cpu_on_android_but_not_on_cpu():
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                    helper.make_node("Gelu", ["r"], ["y"], name="gelu")], [_vi("x")], [_vi("y")], opset=20)
    android = place_nodes(model, get_target("android-arm64"))
    assert [(p.node, p.provider) for p in android] == [("relu", "NnapiExecutionProvider"),
                                                        ("gelu", "CPUExecutionProvider")]
    assert [p.node for p in fallback_nodes(android, get_target("android-arm64"))] == ["gelu"]
    assert not fallback_nodes(place_nodes(model, get_target("cpu-x86")), get_target("cpu-x86"))


def test_custom_domain_op_is_unrunnable_everywhere():
    model = _model([helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="acme.ops")],
                   [_vi("x")], [_vi("y")], domains=("acme.ops",))
    for target in all_targets().values():
        missing = unrunnable_nodes(place_nodes(model, target))
        assert [(p.node, p.op_type) for p in missing] == [("frob", "Frobnicate")]


def test_float8_dequantize_is_not_placed_on_nnapi():
    # ORT's usability checker passes float8 for NNAPI; the dtype lists in the profile must not.
    w = helper.make_tensor("w", TensorProto.FLOAT8E4M3FN, [4], [0.0, 1.0, 2.0, 0.5])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
    model = _model([helper.make_node("DequantizeLinear", ["w", "s"], ["y"], name="dq")], [], [_vi("y", shape=(4,))],
                   opset=21)
    model.graph.initializer.extend([w, scale])
    onnx.checker.check_model(model)
    (placement,) = place_nodes(model, get_target("android-arm64"))
    assert placement.provider == "CPUExecutionProvider"
    assert "NnapiExecutionProvider" in placement.skipped_providers
