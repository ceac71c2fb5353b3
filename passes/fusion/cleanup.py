"""Lossless cleanup: constant folding, dead nodes, identities, no-op ops, duplicate initializers."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.rules import common as rules

from edgec.passes.base import EdgecPass, register_pass

# onnxscript's rules that only remove work (x*1, x+0, Cast to the same type, Transpose by the
# identity, back-to-back Reshapes...). Its fusing rules (BatchNorm, Pad into Conv, Relu into
# Clip) belong to the fuse pass, so that pass can count them.
CLEANUP_RULES = RewriteRuleSet([
    rules.add_0_rule, rules.sub_0_rule, rules.mul_by_1_rule, rules.div_by_1_rule,
    rules.dropout_zero_rule, rules.dropout_inference_rule,
    rules.no_op_cast_rule, rules.no_op_expand_rule, rules.no_op_transpose_rule,
    rules.cast_cast_rule, rules.reshape_reshape_rule, rules.transpose_transpose_rule,
    rules.unsqueeze_unsqueeze_rule, rules.squeeze_reshape_1d_rule,
    rules.collapse_slice_rule, rules.collapse_slice2_rule,
    rules.cast_constant_of_shape_rule, rules.cast_constant_of_shape_without_value_rule,
    rules.materialize_reshape_shape_rule,
    rules.no_op_dynamic_scatter_nd_rule, rules.no_op_static_scatter_nd_rule,
    rules.remove_optional_bias_from_conv_rule, rules.remove_optional_bias_from_conv_transpose_rule,
    rules.remove_optional_bias_from_gemm_rule,
])

MAX_ROUNDS = 3


class _KeepOutputIdentities(common.IdentityEliminationPass):
    """Identity elimination as in onnx_ir, but keeping a graph output's Identity of an output or outer value.

    It keeps ``y = Identity(x)`` where ``y`` is a graph output and ``x`` is itself a graph output or comes
    from another graph (an If/Loop body reading the outer scope).

    onnx_ir renames ``x`` to ``y`` when ``y`` is a graph output. If ``x`` is an output too, that drops
    the output named ``x`` or, in a Loop/Scan body, returns one value twice (ORT then computes the scan
    output wrong: ONNX's test_scan9_sum). If ``x`` belongs to the outer graph, the branch's output is
    produced by no node of the branch (an invalid model: silero-vad's If bodies). Written as a subclass
    because the rule lives in the node check.
    """

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if source is not None and node.outputs and node.outputs[0].is_graph_output():
            producer = source.producer()
            if source.is_graph_output() or (producer is not None and producer.graph is not node.graph):
                return False
        return super()._try_eliminate_identity_node(node)


def count_nodes(model: ir.Model, op_type: str | None = None) -> int:
    """Nodes in the model, subgraphs included; only ``op_type`` ones when given."""
    return sum(1 for n in model.graph.all_nodes() if op_type is None or n.op_type == op_type)


def _fold(model: ir.Model, failures: list[str]) -> None:
    """Run onnxscript's constant folder; a failure (its evaluator on an op it cannot fold) stops folding.

    The folder raises before it replaces the node it failed on, so what it folded before stays valid;
    the pipeline checks the result against the input model either way.
    """
    try:
        fold_constants(model)
    except Exception as exc:  # noqa: BLE001 - the folder wraps evaluator errors in several types
        failures.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def clean(model: ir.Model, fold: bool = True, failures: list[str] | None = None) -> dict[str, int]:
    """Clean ``model`` in place until nothing changes (at most MAX_ROUNDS); return the counts.

    onnxscript's folder and rewriter both recurse into If/Loop/Scan subgraphs. Folding errors are
    appended to ``failures`` and that round goes on without folding.
    """
    counts = {"constants_folded": 0, "no_ops_removed": 0}
    failures = [] if failures is None else failures
    for _ in range(MAX_ROUNDS):
        before = count_nodes(model)
        if fold and not failures:
            _fold(model, failures)
            common.RemoveUnusedNodesPass()(model)
            counts["constants_folded"] += before - count_nodes(model)
        counts["no_ops_removed"] += CLEANUP_RULES.apply_to_model(model)
        if count_nodes(model) == before:
            break
    identities = count_nodes(model, "Identity")
    initializers = len(model.graph.initializers)
    ir.passes.Sequential(
        _KeepOutputIdentities(),
        common.DeduplicateInitializersPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
    )(model)
    counts["identities_removed"] = identities - count_nodes(model, "Identity")
    counts["initializers_deduplicated"] = initializers - len(model.graph.initializers)
    return counts


@dataclasses.dataclass(frozen=True)
class CleanupConfig:
    """Options of the cleanup pass."""

    fold_constants: bool = True


@register_pass("cleanup")
class CleanupGraphPass(EdgecPass[CleanupConfig]):
    """Fold constants, drop unused nodes, identities, no-op ops and duplicated initializers.

    Applies to any graph, subgraphs included (onnxscript's folder and rewriter recurse into them).
    Never fuses ops and never changes graph inputs or outputs.
    """

    config_cls = CleanupConfig

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Clean the model in place and record what each cleanup removed."""
        nodes_before = count_nodes(model)
        failures: list[str] = []
        counts = clean(model, fold=self.config.fold_constants, failures=failures)
        for failure in failures:
            self.skip("fold_constants", f"onnxscript's constant folder failed ({failure}); constants left unfolded")
        nodes_after = count_nodes(model)
        self.record(nodes_removed=nodes_before - nodes_after, **counts)
        return ir.passes.PassResult(model, modified=nodes_after != nodes_before or any(counts.values()))
