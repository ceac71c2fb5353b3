"""A pass declared here, with one ordered knob, is searched with no edit to compiler/search.

The search reads what a knob means only from the pass's ``search_space`` (``Knob``): this test's pass
truncates the low mantissa bits of every float weight, a knob that trades accuracy monotonically, and
the real search (strategy, builds, host timing, scoring) must land on it like on any pass of edgec.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgec.compiler.search import orchestrate
from edgec.compiler.search.evaluate import make_scorer
from edgec.compiler.search.objective import Objective
from edgec.compiler.search.orchestrate import SearchSettings, run_search
from edgec.compiler.search.pareto import describe
from edgec.compiler.search.space import build_space
from edgec.models.zoo import get_zoo_model
from edgec.passes.base import _REGISTRY, EdgecPass, Knob, Tolerance, register_pass
from edgec.targets.registry import get_target

NAME = "test-truncate-weights"
KEY = f"{NAME}.bits"
BITS = (0, 8, 16, 20)


@dataclasses.dataclass(frozen=True)
class TruncateWeightsConfig:
    """Low mantissa bits of float32 weights set to zero (0: none)."""

    bits: int = 0


class TruncateWeightsPass(EdgecPass[TruncateWeightsConfig]):
    """Zero the ``bits`` low mantissa bits of every float32 initializer; never touches graph I/O."""

    config_cls = TruncateWeightsConfig
    tolerance = Tolerance(lossy=True)
    search_space = {"bits": Knob(BITS, ordered=True, idle_at=0, label="{} bits truncated")}

    def call(self, model: ir.Model) -> ir.passes.PassResult:  # noqa: D102
        mask = np.uint32((0xFFFFFFFF << self.config.bits) & 0xFFFFFFFF)
        changed = 0
        for value in model.graph.initializers.values():
            if value.const_value is None or value.const_value.dtype != ir.DataType.FLOAT:
                continue
            array = np.ascontiguousarray(value.const_value.numpy())
            value.const_value = ir.tensor((array.view(np.uint32) & mask).view(np.float32), name=value.name)
            changed += 1
        self.record(initializers_truncated=changed)
        return ir.passes.PassResult(model, modified=bool(changed and self.config.bits))


class InProcessExecutor:
    """The ``Executor`` protocol in this process: the pass registered here does not exist in spawned workers."""

    def map(self, fn, items, on_result=None):  # noqa: D102
        results = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_result:
                on_result(i, results[-1])
        return results

    def close(self) -> None:  # noqa: D102
        pass


@pytest.fixture
def registered(monkeypatch):
    register_pass(NAME)(TruncateWeightsPass)
    monkeypatch.setattr(orchestrate, "make_executor", lambda scheduler, workers: InProcessExecutor())
    yield TruncateWeightsPass
    _REGISTRY.pop(NAME, None)


@pytest.fixture(scope="module")
def digits():
    zoo = get_zoo_model("digits-cnn")
    proto = onnx.load(str(zoo.onnx_path()))
    feeds = zoo.calibration(8)
    return proto, feeds


def test_a_pass_declared_in_a_test_is_searched_on_its_ordered_knob(registered, digits):
    proto, feeds = digits
    target = get_target("cpu-x86")
    space = build_space((NAME,), proto, target)
    knob = space.knob(KEY)
    assert knob is not None and knob.ordered and not knob.continuous and knob.choices == BITS
    assert space.default()[KEY] == 0 and space.pipeline(space.default()) == ((), {})  # idle: left out
    assert space.pipeline({KEY: 16}) == ((NAME,), {NAME: {"bits": 16}})

    scorer = make_scorer(proto.SerializeToString(), feeds, None, None)  # output agreement with the original
    result = run_search(proto, space, SearchSettings(Objective(max_drop=0.5), budget=8, workers=1),
                        target=target, calibration=feeds, scorer=scorer)

    # Anchors cover every level of an ordered knob within half the budget: each was built, timed and scored.
    by_bits = {e.candidate[KEY]: e for e in result.evaluations}
    assert set(by_bits) == set(BITS) and all(e.ok for e in by_bits.values()), [e.error for e in result.evaluations]
    assert len({e.model_digest for e in by_bits.values()}) == len(BITS)  # each value built a different model
    assert by_bits[0].accuracy == pytest.approx(1.0, abs=1e-6)
    assert by_bits[20].accuracy < by_bits[8].accuracy  # 3 mantissa bits left: the outputs move

    chosen = result.chosen.candidate[KEY]
    assert chosen in BITS and result.objective.feasible(result.chosen)
    assert describe(result.chosen.candidate) == ("fp32" if chosen == 0 else f"fp32, {chosen} bits truncated")
