"""Target profiles load from data, unknown names are refused, and node placement follows the EP tables."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgec.core.errors import TargetError
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


def test_constant_and_function_ops_run_everywhere_ort_runs_them():
    # ORT folds Constant into an initializer and expands ops that have an ONNX function body (CastLike).
    c = helper.make_node("Constant", [], ["c"], name="c", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]))
    like = helper.make_node("CastLike", ["x", "c"], ["y"], name="like")
    model = _model([c, like], [_vi("x", TensorProto.DOUBLE)], [_vi("y")], opset=21)
    for name in ("cpu-x86", "android-arm64", "ios-arm64"):
        assert not unrunnable_nodes(place_nodes(model, get_target(name))), name


def test_kernel_types_and_versions_decide_on_the_cpu_ep():
    # int16 Add has a CPU kernel from opset 14 on, not in opset 13: ORT and the check agree both ways.
    import onnxruntime as ort

    for opset, runs in ((14, True), (13, False)):
        model = _model([helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                       [_vi("a", TensorProto.INT16), _vi("b", TensorProto.INT16)], [_vi("y", TensorProto.INT16)],
                       opset=opset)
        assert bool(unrunnable_nodes(place_nodes(model, get_target("cpu-x86")))) is not runs
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            loaded = True
        except Exception:  # noqa: BLE001 - ORT's NOT_IMPLEMENTED
            loaded = False
        assert loaded is runs


def test_float16_nodes_with_only_float_kernels_run_through_inserted_casts():
    # ORT's CPU EP has no float16 Sin; it casts around it, so the model runs.
    model = _model([helper.make_node("Sin", ["x"], ["y"], name="sin")], [_vi("x", TensorProto.FLOAT16)],
                   [_vi("y", TensorProto.FLOAT16)], opset=17)
    assert not unrunnable_nodes(place_nodes(model, get_target("cpu-x86")))


def test_nodes_inside_subgraphs_are_placed_and_named_by_their_path():
    frob = helper.make_node("Frobnicate", ["x"], ["t"], name="frob", domain="acme.ops")
    then = helper.make_graph([frob], "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="id")], "else", [], [_vi("e")])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    model = _model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)],
                   [cond, _vi("x")], [_vi("y")], domains=("acme.ops",))
    placements = place_nodes(model, get_target("cpu-x86"))
    assert sorted(p.node for p in placements) == ["branch", "branch/else_branch/id", "branch/then_branch/frob"]
    assert [p.node for p in unrunnable_nodes(placements)] == ["branch/then_branch/frob"]


def test_no_backend_node_test_that_ort_loads_is_refused_on_cpu_x86():
    # Every 5th of ONNX's ~1,900 node tests: whatever ORT's CPU EP loads, the op check accepts.
    import sys
    from pathlib import Path

    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import conformance

    options = ort.SessionOptions()
    options.log_severity_level = 4
    refused = []
    for case in conformance.load_cases(("node",))[::5]:
        try:
            ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001, S112 - ORT cannot load it: a refusal would be right
            continue
        missing = unrunnable_nodes(place_nodes(case.model, get_target("cpu-x86")))
        if missing:
            refused.append(f"{case.name}: {missing[0].op_type}")
    assert not refused, refused
