"""Per-layer widths: prune-channels' ``groups`` option, the layers it names, their cost model and the search phase.

Every model is a real zoo export; builds run the real pass and ORT. The cost model is checked against the
FLOPs of models really pruned at those widths, the phase against the search it refines.
"""

from __future__ import annotations

import hashlib
import random
import tomllib

import numpy as np
import onnx
import pytest

from edgec.compiler.pipeline import run_pipeline
from edgec.compiler.search.evaluate import build_model, make_scorer
from edgec.compiler.search.layers import LayerCost, LayerEvolution, LayerPhase, fit_cost, static_at
from edgec.compiler.search.objective import Evaluation, Objective
from edgec.compiler.search.orchestrate import SearchSettings, run_search
from edgec.compiler.search.space import build_space, choice_toml
from edgec.core.errors import ConfigError
from edgec.core.stats import model_stats
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.pruning import PruneChannelsConfig, PruneChannelsPass
from edgec.targets.registry import get_target

TARGET = get_target("cpu-x86")
OPTIONS = {"mode": "constrained", "rounding": "dithered", "recovery": "lstsq", "importance": "l2"}
LEVELS = (0.0, 0.2, 0.3, 0.5, 0.7)


@pytest.fixture(scope="module")
def mnist():
    zoo = get_zoo_model("mnist-resnet")
    return zoo, onnx.load(str(zoo.onnx_path())), zoo.calibration(8)


def _build(proto, feeds, **options) -> bytes:
    return build_model(proto.SerializeToString(), ["prune-channels"], {"prune-channels": {**OPTIONS, **options}},
                       "cpu-x86", feeds, 0)


def _levels(proto, feeds, levels=LEVELS):
    return PruneChannelsPass.layer_levels(proto, TARGET, feeds[0], "groups", levels, OPTIONS)


def test_every_group_at_the_uniform_ratio_builds_the_uniform_model(mnist):
    _, proto, feeds = mnist
    layers = _levels(proto, feeds)
    assert layers is not None and len(layers.layers) >= 4
    uniform = _build(proto, feeds, ratio=0.3)
    per_group = _build(proto, feeds, ratio=0.0, groups={name: 0.3 for name in layers.layers})
    assert hashlib.sha256(uniform).digest() == hashlib.sha256(per_group).digest()


def test_one_group_pruned_alone_narrows_only_its_producers(mnist):
    zoo, proto, feeds = mnist
    layers = _levels(proto, feeds)
    name = layers.layers[-1]
    built = onnx.load_from_string(_build(proto, feeds, ratio=0.0, groups={name: 0.7}))

    def out_channels(model: onnx.ModelProto) -> dict[str, int]:
        dims = {t.name: t.dims for t in model.graph.initializer}
        return {n.name: dims[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"}

    before, after = out_channels(proto), out_channels(built)
    assert after[name] == round(layers.kept[-1][LEVELS.index(0.7)] * layers.widths[-1]) < before[name]
    narrowed = {n for n in before if after[n] != before[n]}
    assert name in narrowed and len(narrowed) < len(before)  # other groups keep their widths
    assert zoo.evaluate(built.SerializeToString())["accuracy"] > 0.5


@pytest.mark.parametrize("name", ["mnist-resnet", "yolo-det", "minilm"])
def test_the_cost_model_counts_the_flops_of_the_model_really_built(name):
    """FLOPs the layer scaling predicts for a mixed choice of widths match those of the built model within 3%."""
    zoo = get_zoo_model(name)
    proto = onnx.load(str(zoo.onnx_path()))
    feeds = zoo.calibration(2)
    layers = _levels(proto, feeds)
    assert layers is not None
    rng = random.Random(0)
    choice = [rng.randrange(len(LEVELS)) for _ in layers.layers]
    groups = {n: LEVELS[k] for n, k in zip(layers.layers, choice, strict=True)}
    built = onnx.load_from_string(_build(proto, feeds, ratio=0.0, groups=groups, recovery="none"))
    shapes = {k: tuple(np.asarray(v).shape) for k, v in feeds[0].items()}
    cost = LayerCost(layers, static_at(proto, feeds[0]))
    predicted = cost.features(choice)[1]
    actual = model_stats(built, shapes).flops
    assert predicted == pytest.approx(actual, rel=0.03), (predicted, actual)
    unpruned = cost.features([0] * len(layers.layers))[1]
    assert unpruned == pytest.approx(model_stats(proto, shapes).flops, rel=0.01)


def test_groups_are_checked_and_unknown_names_noted(mnist):
    _, proto, feeds = mnist
    with pytest.raises(ConfigError, match=r"groups\.node_Conv_135 must be a number in \[0, 1\)"):
        PruneChannelsConfig(groups={"node_Conv_135": 1.5})
    ctx = BuildContext(TARGET, feeds)
    options = {**OPTIONS, "ratio": 0.0, "groups": {"no_such_node": 0.5, _levels(proto, feeds).layers[0]: 0.5}}
    run_pipeline(onnx.load_from_string(proto.SerializeToString()), [create_pass("prune-channels", ctx, options)], ctx)
    notes = [(n.where, n.reason) for n in ctx.report.skips]
    assert any(where == "no_such_node" and "names no prunable channel group" in why for where, why in notes), notes
    assert list(ctx.report.stats["prune-channels"]["group_ratios"]) == [_levels(proto, feeds).layers[0]]
    assert PruneChannelsPass.layer_levels(proto, TARGET, feeds[0], "groups", LEVELS,
                                          {**OPTIONS, "allocation": "global"}) is None


def test_a_per_layer_choice_rebuilds_from_its_toml(mnist, tmp_path):
    _, proto, feeds = mnist
    space = build_space(("prune-channels",), proto, TARGET)
    assert [k.key for k in space.layer_knobs] == ["prune-channels.groups"]
    layers = _levels(proto, feeds)
    candidate = {**space.default(), "prune-channels.ratio": 0.3, "prune-channels.groups": ((layers.layers[0], 0.5),)}
    passes, options = space.pipeline(candidate)
    assert options["prune-channels"]["groups"] == {layers.layers[0]: 0.5}
    text = choice_toml({"model": "zoo:mnist-resnet"}, passes, options, {}, "test")
    assert tomllib.loads(text)["pass-options"]["prune-channels"]["groups"] == {layers.layers[0]: 0.5}
    weird = choice_toml({}, passes, {"prune-channels": {"groups": {"/stage.1/conv:0": 0.2}}}, {}, "test")
    assert tomllib.loads(weird)["pass-options"]["prune-channels"]["groups"] == {"/stage.1/conv:0": 0.2}


def test_offspring_keep_the_parents_latency_by_the_cost_model(mnist):
    _, proto, feeds = mnist
    space = build_space(("prune-channels",), proto, TARGET)
    knob, uniform = space.layer_knobs[0], space.knob("prune-channels.ratio")
    layers = PruneChannelsPass.layer_levels(proto, TARGET, feeds[0], "groups", (0.0, 0.1, 0.3, 0.5, 0.7), OPTIONS)
    base = Evaluation({**space.default(), "prune-channels.ratio": 0.3}, 1.0, 0.9, 0.05)
    points = [Evaluation({**base.candidate, "prune-channels.ratio": r}, ms, 0.9, 0.05)
              for r, ms in ((0.0, 2.0), (0.3, 1.0), (0.5, 0.7))]
    phase = LayerPhase(knob, uniform, layers, base)
    cost = fit_cost(phase, points, proto.SerializeToString(), feeds[0])
    assert cost.predict(phase.choice_of(base.candidate)) == pytest.approx(1.0, rel=0.15)
    evolution = LayerEvolution(phase, cost, random.Random(0))
    children = evolution.propose(6)
    assert children
    for child in children:
        assert cost.predict(child) <= evolution.budget_ms * (1 + 1e-9)
        assert child != evolution.parent
    widths = {tuple(layers.kept[i][k] for i, k in enumerate(c)) for c in children}
    assert len(widths) == len(children)  # no two build the same widths


def test_the_search_refines_per_layer_and_never_loses_accuracy(mnist, monkeypatch):
    zoo, proto, feeds = mnist
    space = build_space(("prune-channels",), proto, TARGET)
    scorer = make_scorer(proto.SerializeToString(), feeds[6:], None, "mnist-resnet")
    settings = SearchSettings(Objective(), budget=6, workers=1, latency_ratio=0.6, layer_budget=4)
    result = run_search(proto, space, settings, target=TARGET, calibration=feeds[:6], scorer=scorer)
    per_layer = [e for e in result.evaluations if e.candidate.get("prune-channels.groups")]
    uniform = [e for e in result.evaluations if not e.candidate.get("prune-channels.groups")]
    assert result.layer_phase is not None and per_layer, [e.error for e in result.evaluations]
    assert all(e.ok for e in per_layer), [e.error for e in per_layer]
    best_uniform = result.objective.best(uniform)
    assert best_uniform is not None and result.chosen.score >= best_uniform.score - 1e-12


@pytest.fixture(scope="module")
def device_file(tmp_path_factory) -> str:
    from edgec.compiler.sweep_models import load_sweep_models
    from edgec.runtime.devices import export_device_file

    path = str(tmp_path_factory.mktemp("device") / "host.json")
    export_device_file("local", path, target="cpu-x86", models=load_sweep_models(["mnist-resnet"]), max_per_op=2,
                       runs=5, warmup=1)
    return path


def test_with_a_device_file_offspring_are_priced_by_it(mnist, device_file):
    """A device file prices each per-layer offspring's built graph, as it priced every uniform candidate."""
    from edgec.compiler.search.latency_model import LatencyModel
    from edgec.runtime.devices.sweep import load_device_file

    _, proto, feeds = mnist
    space = build_space(("prune-channels",), proto, get_target("android-arm64"))
    scorer = make_scorer(proto.SerializeToString(), feeds[6:], None, "mnist-resnet")
    settings = SearchSettings(Objective(), budget=6, workers=1, latency_ratio=0.6, layer_budget=4,
                              device_file=device_file)
    result = run_search(proto, space, settings, target=get_target("android-arm64"), calibration=feeds[:6],
                        scorer=scorer)
    per_layer = [e for e in result.evaluations if e.candidate.get("prune-channels.groups") and e.ok]
    assert per_layer, [e.error for e in result.evaluations]
    model = LatencyModel(load_device_file(device_file))
    original_ms = model.predict(proto).total_ms
    for e in per_layer[:2]:
        passes, options = space.pipeline(e.candidate)
        built = build_model(proto.SerializeToString(), passes, options, "android-arm64", feeds[:6], 0)
        predicted = model.predict(onnx.load_from_string(built)).total_ms
        assert e.ms / result.baseline_ms == pytest.approx(predicted / original_ms, rel=1e-6)
