"""Lossless cleanup: constant folding, dead nodes, identities, duplicate initializers."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from edgec.passes.base import EdgecPass, register_pass


@dataclasses.dataclass(frozen=True)
class CleanupConfig:
    """Options of the cleanup pass."""

    fold_constants: bool = True


@register_pass("cleanup")
class CleanupGraphPass(EdgecPass[CleanupConfig]):
    """Fold constants, drop unused nodes, identities and duplicated initializers.

    Applies to any graph, subgraphs included (onnxscript's optimizer recurses into them).
    Never changes graph inputs or outputs.
    """

    config_cls = CleanupConfig

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes_before = sum(1 for _ in model.graph.all_nodes())
        if self.config.fold_constants:
            onnxscript.optimizer.optimize(model, num_iterations=2)
        ir.passes.Sequential(
            common.IdentityEliminationPass(),
            common.DeduplicateInitializersPass(),
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedOpsetsPass(),
        )(model)
        nodes_after = sum(1 for _ in model.graph.all_nodes())
        self.record(nodes_removed=nodes_before - nodes_after)
        return ir.passes.PassResult(model, modified=nodes_after != nodes_before)
