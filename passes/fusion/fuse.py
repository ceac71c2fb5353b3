"""Lossless fusion for ONNX Runtime: onnxscript's optimizer, its rule library and its ORT fusion rules."""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer
from onnxscript.optimizer import fold_constants
from onnxscript.rewriter.ort_fusions import shape_optimization

from edgec.passes.base import EdgecPass, Tolerance, register_pass
from edgec.passes.fusion.cleanup import clean, count_nodes
from edgec.passes.fusion.rules.catalog import CONTRIB_STEPS, STANDARD_STEPS, FusionStep

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
# onnxscript's intermediate fusion domain (SDPA...); none may survive the pass.
FUSION_DOMAIN = "ai.onnxruntime._fusion"


def contrib_ops_in(model: ir.Model) -> set[str]:
    """com.microsoft op types present in the model, subgraphs included."""
    return {n.op_type for n in model.graph.all_nodes() if n.domain == MS_DOMAIN}


def _fold_weight_concats(model: ir.Model) -> None:
    # Fused Attention takes Concat(Wq, Wk, Wv); its inputs exceed onnxscript's default folding
    # size limit, so fold constant Concats explicitly and store one packed weight.
    fold_constants(model, should_fold=lambda node: True if node.op_type == "Concat" else None)
    common.RemoveUnusedNodesPass()(model)


def _optimize(model: ir.Model, failures: list[str]) -> None:
    """Run onnxscript's optimizer, unless it failed before on this model.

    After one failure (its folder on an op it cannot evaluate, e.g. ONNX's test_split_to_sequence_1) it is
    not run again, and the pass goes on with its rules. The pipeline checks the result against the input
    model either way.
    """
    if failures:
        return
    try:
        onnxscript.optimizer.optimize(model)
    except Exception as exc:  # noqa: BLE001 - onnx_ir wraps the folder's errors in PassError
        cause = exc.__cause__ or exc
        failures.append(str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__)


def _prepare_for_transformer_fusions(model: ir.Model, failures: list[str]) -> None:
    # The ORT fusion rules check ranks and dims, so shapes must be known and Shape/Gather
    # chains on static dims folded first (as onnxscript's fuse_xformers does).
    common.ShapeInferencePass()(model)
    _optimize(model, failures)
    shape_optimization.rules.apply_to_model(model)
    _optimize(model, failures)


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    """Options of the fuse pass."""

    transformer_fusions: bool = True


@register_pass("fuse")
class FuseGraphPass(EdgecPass[FuseConfig]):
    """Fold BatchNorm/affine ops into Conv, MatMul+Add into Gemm, transformer blocks into ORT contrib ops.

    Cleans the graph first (constants, no-ops, identities). Contrib ops (Attention,
    SkipLayerNormalization, Gelu, BiasGelu, FusedMatMul...) are emitted only when some EP of the
    target has kernels for them; other fusions are skipped with a note. Rules recurse into
    If/Loop/Scan subgraphs. Never changes graph inputs or outputs.
    """

    config_cls = FuseConfig
    # Fused kernels (Attention, SkipLayerNorm) sum in another order: ~1e-6 relative in practice.
    tolerance = Tolerance(rtol=1e-4)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Clean, apply the fusion rules the target allows, optimize, and record the fusions made."""
        nodes_before = count_nodes(model)
        contrib_before = contrib_ops_in(model)
        failures: list[str] = []
        passed_through = [v.name for v in model.graph.outputs if v.is_graph_input()]
        if passed_through:  # onnxscript's optimizer would rename that input (x_orig): it is not run
            failures.append(f"output {passed_through[0]!r} is a graph input itself, which it would rename")
        cleaned = clean(model, failures=failures)
        counts = self._run_steps(model, STANDARD_STEPS)
        if self.config.transformer_fusions:
            _prepare_for_transformer_fusions(model, failures)
            counts.update(self._run_steps(model, self._allowed(CONTRIB_STEPS)))
        _optimize(model, failures)  # inlines fusion functions no rule consumed
        if not failures:
            _fold_weight_concats(model)
        clean(model, failures=failures)
        for failure in failures:
            self.skip("optimizer", f"onnxscript's optimizer failed ({failure}); constants left unfolded")
        self._check_contrib_ops(model, contrib_before)
        nodes_after = count_nodes(model)
        fused = {k: v for k, v in {**cleaned, **counts}.items() if v}
        self.record(nodes_removed=nodes_before - nodes_after, **fused)
        return ir.passes.PassResult(model, modified=nodes_after != nodes_before or bool(fused))

    def _allowed(self, steps: tuple[FusionStep, ...]) -> list[FusionStep]:
        """The steps whose emitted ops the target has; a skip note for each other one."""
        available = self.ctx.target.contrib_ops
        allowed = []
        for step in steps:
            missing = sorted(step.emits - available)
            if missing:
                self.skip(f"fusion {step.name}",
                          f"target {self.ctx.target.name} has no kernel for {MS_DOMAIN}.{missing[0]}")
            else:
                allowed.append(step)
        return allowed

    def _run_steps(self, model: ir.Model, steps: list[FusionStep] | tuple[FusionStep, ...]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in steps:
            if step.after is not None and not counts.get(step.after):
                counts[step.name] = 0
                continue
            counts[step.name] = counts.get(step.name, 0) + step.apply(model)
            logger.debug("fusion %s: %d", step.name, counts[step.name])
        return counts

    def _check_contrib_ops(self, model: ir.Model, before: set[str]) -> None:
        # A bug guard, not a user error: the step table must never emit an op the target lacks.
        leftover = [n.op_type for n in model.graph.all_nodes() if n.domain == FUSION_DOMAIN]
        if leftover:
            raise RuntimeError(f"fuse left intermediate fusion ops behind: {sorted(set(leftover))}")
        extra = contrib_ops_in(model) - before - self.ctx.target.contrib_ops
        if extra:
            raise RuntimeError(f"fuse emitted {sorted(extra)} that target {self.ctx.target.name} lacks")
