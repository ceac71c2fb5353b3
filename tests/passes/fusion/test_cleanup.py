"""The cleanup pass folds constants, drops identities, no-ops and duplicate initializers, losslessly."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import pytest

from edgec.compiler.pipeline import run_pipeline
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.targets.registry import get_target

RTOL = 1e-5


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _feeds(shape: tuple[int, ...], n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _cleanup(text: str, shape: tuple[int, ...]):
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    ctx = BuildContext(get_target("cpu-x86"), _feeds(shape))
    result = run_pipeline(proto, [create_pass("cleanup", ctx)], ctx)
    return result.model, result.records[0]


IDENTITY_AND_NO_OPS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) {
    a = Identity(x)
    one = Constant<value = float {1.0}>()
    b = Mul(a, one)
    c = Relu(b)
    y = Identity(c)
}
"""


def test_identity_and_mul_by_one_are_removed():
    model, record = _cleanup(IDENTITY_AND_NO_OPS, (2, 4))
    ops = _ops(model)
    assert ops["Relu"] == 1
    assert ops["Mul"] == 0
    # The graph output keeps its name, so at most one Identity may stay to carry it.
    assert ops["Identity"] <= 1
    assert [o.name for o in model.graph.output] == ["y"]
    assert record.stats["no_ops_removed"] >= 1
    assert record.max_rel_error <= RTOL


CONSTANT_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) {
    s1 = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
    s2 = Constant<value = float[4] {0.5, 0.5, 0.5, 0.5}>()
    s = Mul(s1, s2)
    t = Add(s, s2)
    y = Mul(x, t)
}
"""


def test_constant_subgraph_is_folded_and_output_unchanged():
    model, record = _cleanup(CONSTANT_CHAIN, (2, 4))
    assert _ops(model) == {"Mul": 1}
    assert record.stats["constants_folded"] >= 2
    assert record.max_rel_error <= RTOL


DUPLICATE_WEIGHTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y)
  <float[4, 4] w1 = {1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.},
   float[4, 4] w2 = {1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.}> {
    a = MatMul(x, w1)
    y = MatMul(a, w2)
}
"""


def test_duplicate_initializers_are_merged():
    model, record = _cleanup(DUPLICATE_WEIGHTS, (2, 4))
    assert len(model.graph.initializer) == 1
    assert record.stats["initializers_deduplicated"] == 1
    assert record.max_rel_error <= RTOL


IF_WITH_NO_OPS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x, bool c) => (float[2, 4] y) {
    y = If(c) <
        then_branch = t () => (float[2, 4] ty) {
            one = Constant<value = float {1.0}>()
            ta = Mul(x, one)
            ty = Relu(ta)
        },
        else_branch = e () => (float[2, 4] ey) {
            zero = Constant<value = float {0.0}>()
            ea = Add(x, zero)
            ey = Neg(ea)
        }
    >
}
"""


@pytest.mark.parametrize("cond", [True, False])
def test_cleanup_reaches_into_if_branches(cond: bool):
    proto = onnx.parser.parse_model(IF_WITH_NO_OPS)
    feeds = [{**f, "c": np.array(cond)} for f in _feeds((2, 4))]
    ctx = BuildContext(get_target("cpu-x86"), feeds)
    result = run_pipeline(proto, [create_pass("cleanup", ctx)], ctx)
    branch_ops = collections.Counter(
        n.op_type for attr in result.model.graph.node[0].attribute for n in attr.g.node)
    assert branch_ops["Mul"] == 0 and branch_ops["Add"] == 0
    assert branch_ops["Relu"] == 1 and branch_ops["Neg"] == 1
    assert result.records[0].max_rel_error <= RTOL
    assert not result.records[0].skips
