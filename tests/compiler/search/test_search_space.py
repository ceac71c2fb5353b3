"""The search space from the real passes' declarations, candidates as edgec.toml, and the landing arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

from edgec.compiler.config import SEARCH_PASSES, config_file_fields
from edgec.compiler.search.space import build_space, choice_toml
from edgec.compiler.search.strategy import _fit_ratio, _spread
from edgec.core.errors import ConfigError
from edgec.models.zoo import get_zoo_model
from edgec.passes.depth.prune_depth import removable_blocks
from edgec.passes.pruning.plan import ratio_breakpoints, round_keep
from edgec.targets.registry import get_target


@pytest.fixture(scope="module")
def mnist() -> onnx.ModelProto:
    return onnx.load(str(get_zoo_model("mnist-resnet").onnx_path()))


def test_space_is_the_union_of_the_passes_search_spaces(mnist):
    space = build_space(SEARCH_PASSES, mnist, get_target("cpu-x86"))
    keys = {k.key for k in space.knobs}
    assert {"precision", "prune-channels.ratio", "prune-channels.recovery", "prune-depth.num_blocks",
            "quantize-int8.calibration"} <= keys
    ratio = space.knob("prune-channels.ratio")
    assert ratio.ordered and ratio.continuous and (ratio.low, ratio.high) == (0.0, 0.6)
    # num_blocks is clipped to what the model has: mnist-resnet has 2 identity residual blocks.
    assert removable_blocks(mnist, "layer") == 2
    assert space.knob("prune-depth.num_blocks").choices == (0, 1, 2)
    assert space.knob("precision").choices == ("fp32", "int8")
    # placement "auto" times the host: a rebuild would not be exact, so the search never picks it.
    assert "auto" not in space.knob("quantize-int8.placement").choices


def test_transformers_get_dynamic_int8_as_their_int8():
    minilm = onnx.load(str(get_zoo_model("minilm").onnx_path()))
    space = build_space(SEARCH_PASSES, minilm, get_target("cpu-x86"))
    assert space.knob("precision").choices == ("fp32", "int8-dynamic")
    candidate = {**space.default(), "precision": "int8-dynamic"}
    assert space.pipeline(candidate)[0][-1] == "quantize-dynamic"


def test_candidate_round_trips_through_the_config_loader(mnist, tmp_path):
    space = build_space(SEARCH_PASSES, mnist, get_target("cpu-x86"))
    candidate = space.canonical({**space.default(), "precision": "int8", "prune-channels.ratio": 0.3456,
                                 "prune-depth.num_blocks": 1})
    passes, options = space.pipeline(candidate)
    assert passes == ("cleanup", "prune-depth", "prune-channels", "fuse", "quantize-int8")
    assert options["prune-channels"]["ratio"] == 0.346  # rounded: equal builds get equal keys
    path = tmp_path / "choice.toml"
    path.write_text(choice_toml({"model": "zoo:mnist-resnet", "target": "cpu-x86", "seed": 0}, passes, options,
                                {"calibration": {"samples": 16}}, "a comment\nover two lines"))
    fields = config_file_fields(path)
    assert fields["passes"] == passes and fields["pass_options"] == options
    assert fields["calib_samples"] == 16 and fields["model"] == "zoo:mnist-resnet"


def test_no_pruning_means_no_pruning_pass(mnist):
    space = build_space(SEARCH_PASSES, mnist, get_target("cpu-x86"))
    assert space.pipeline(space.default()) == (("cleanup", "fuse"), {})


def test_passes_without_knobs_are_a_user_error(mnist):
    with pytest.raises(ConfigError, match="none of cleanup, fuse has anything to search"):
        build_space(("cleanup", "fuse"), mnist, get_target("cpu-x86"))


def test_landing_step_solves_the_quadratic_latency_model():
    # latency(r) = 1 + 4 (1 - r)^2: through r=0 (5 ms) and r=0.5 (2 ms), 3 ms is at r = 1 - sqrt(0.5).
    assert _fit_ratio([(0.0, 5.0), (0.5, 2.0)], 3.0) == pytest.approx(1 - 0.5**0.5, abs=1e-9)
    # One point: the prior puts 15% of latency out of pruning's reach.
    assert _fit_ratio([(0.0, 1.0)], 0.15 + 0.85 * 0.25) == pytest.approx(0.5, abs=1e-9)
    assert _fit_ratio([(0.0, 1.0)], 0.1) is None  # below the fixed part: unreachable by pruning


def test_anchor_depth_levels_go_coarse_to_fine():
    assert _spread([0, 1, 2, 3, 4]) == [0, 4, 2, 1, 3]
    assert _spread([0, 1]) == [0, 1]


@pytest.mark.parametrize("rounding", ["up", "dithered"])
def test_no_width_changes_between_two_breakpoints(rounding):
    # The landing snaps to breakpoints on the promise that every ratio between two of them builds the
    # same model: check it on ResNet-50's widths and two that are not multiples of 16.
    widths = {64, 128, 256, 512, 1024, 2048, 3, 100}
    steps = _synthetic_breakpoints(widths, rounding)
    assert len(steps) > 50
    for low, high in itertools.pairwise(steps):
        before_next = high - 0.0010001  # each point is its step rounded up to 3 decimals
        if before_next >= low:
            for n in widths:
                assert round_keep(n, low, 16, rounding) == round_keep(n, before_next, 16, rounding), (n, low)


def _synthetic_breakpoints(widths, rounding):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", f"w{n}"], [f"y{n}"]) for n in widths], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)], [],
        [onnx.helper.make_tensor(f"w{n}", onnx.TensorProto.FLOAT, [n, 1, 1, 1], [0.0] * n) for n in widths])
    return ratio_breakpoints(onnx.helper.make_model(graph), 16, 0.0, 0.6, rounding)


def test_dithered_rounding_spreads_the_steps_of_a_resnet_over_the_ratios():
    widths = (128, 256, 512, 1024, 2048)  # ResNet-50's widths past the stem
    # Rounded up, all five widths drop 16 channels at the same ratios; dithered, at most two within 0.001.
    for rounding, most_at_once in (("up", 5), ("dithered", 2)):
        steps = {}
        for r in np.arange(0.001, 0.6, 0.001):
            changed = sum(round_keep(n, r, 16, rounding) != round_keep(n, r - 0.001, 16, rounding) for n in widths)
            steps[round(float(r), 3)] = changed
        assert max(steps.values()) == most_at_once, rounding
    for n in (3, 64, 100, 2048):
        assert round_keep(n, 0.0, 16, "dithered") == n
        for r in (0.1, 0.3, 0.6):
            assert abs(round_keep(n, r, 16, "dithered") - max(n * (1 - r), min(16, n))) <= 16
