"""Rules that turn spatial means into GlobalAveragePool, which ORT's x86 NCHWc layout keeps blocked."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from edgec.passes.ir_utils import initializer_value


def _axes(value: ir.Value | None) -> list[int] | None:
    array = initializer_value(value)
    return None if array is None else [int(a) for a in array.ravel()]


class FuseReduceMeanIntoGlobalAveragePool(RewriteRuleClassBase):
    """``ReduceMean(x, axes=[2, 3], keepdims=1)`` on NCHW x -> ``GlobalAveragePool(x)``.

    The dynamo exporter writes adaptive average pooling (squeeze-excite blocks, classifier heads)
    as ReduceMean; ORT CPU has no NCHWc ReduceMean, so each one costs a ReorderOutput/ReorderInput
    pair around it, while GlobalAveragePool runs blocked. Opset 18+ form (axes as an input).
    """

    def pattern(self, op, x, axes):
        """A ReduceMean of ``x`` over the ``axes`` input, any attributes."""
        return op.ReduceMean(x, axes, _allow_other_attributes=True, _outputs=["mean"])

    # onnxscript types check() as (op, *args, **kwargs), yet rules are meant to name their pattern variables.
    def check(self, context, x, axes, mean, **_) -> MatchResult:  # type: ignore[override]
        """Match only a keepdims ReduceMean over the two spatial axes of a rank-4 input."""
        result = MatchResult()
        node = mean.producer()
        if node.attributes.get_int("keepdims", 1) != 1:
            return result.fail("keepdims=0: the output rank differs from GlobalAveragePool's")
        if x.shape is None or x.shape.rank() != 4:
            return result.fail("input is not known to be rank 4")
        found = _axes(axes)
        if found is None or sorted(a % 4 for a in found) != [2, 3]:
            return result.fail(f"axes {found} are not the two spatial axes")
        return result

    def rewrite(self, op, x, axes, mean, **_):
        """GlobalAveragePool of ``x``."""
        return op.GlobalAveragePool(x)


pooling_rules = RewriteRuleSet([FuseReduceMeanIntoGlobalAveragePool.rule()])
