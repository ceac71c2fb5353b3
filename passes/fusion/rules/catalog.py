"""The fusion steps the fuse pass runs, in order, and the com.microsoft ops each one may emit.

Each step wraps onnxscript rules (its optimizer's rule library or ``ort_fusions``). A step runs
only when the target's EPs have kernels for every op it emits, so no pass branches on a target name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.ort_fusions import (
    attention,
    bias_gelu,
    erfgelu,
    fused_matmul_rule_sets,
    gelu,
    gqa,
    mha,
    mha_bias,
    mha_scale,
    rms_normalization,
    rotary_embedding,
    sdpa,
    sdpa_via_mha,
    skip_normalization,
)
from onnxscript.rewriter.rules import common as rules
from onnxscript.rewriter.rules.fusion import _layer_norm

from edgec.passes.fusion.rules.pooling import pooling_rules


@dataclasses.dataclass(frozen=True)
class FusionStep:
    """One named fusion: a function that applies it in place and returns how often it fired."""

    name: str
    apply: Callable[[ir.Model], int]
    emits: frozenset[str] = frozenset()
    # Steps that fire only after an earlier one did (MHA+bias needs an MHA to extend).
    after: str | None = None


def _ruleset(*rule_list: object) -> Callable[[ir.Model], int]:
    rule_set = RewriteRuleSet(list(rule_list))  # type: ignore[arg-type]
    return rule_set.apply_to_model


def _with_shapes(fuse: Callable[..., int]) -> Callable[[ir.Model], int]:
    # SDPA's rewrite adds nodes whose shapes later MHA checks read.
    return lambda model: fuse(model, apply_shape_inference=True)


def _layer_norm_if_opset17(model: ir.Model) -> int:
    # LayerNormalization is a standard op only from opset 17.
    if model.opset_imports.get("", 0) < 17:
        return 0
    return _layer_norm.fuse_layer_normalization(model)


def _ms(*ops: str) -> frozenset[str]:
    return frozenset(ops)


# Standard-ONNX fusions: every target runs them.
STANDARD_STEPS: tuple[FusionStep, ...] = (
    FusionStep("bn_folded", _ruleset(rules.fuse_batchnorm_into_conv_rule,
                                     rules.fuse_batchnorm_into_conv_transpose_rule,
                                     rules.fuse_batchnorm_into_gemm_rule)),
    FusionStep("affine_folded_into_conv", _ruleset(rules.affine_conv_fusion_rule,
                                                   rules.conv_affine_fusion_rule)),
    FusionStep("pad_folded_into_conv", _ruleset(rules.normalize_pad_format_conv_rule,
                                                rules.fuse_pad_into_conv_rule)),
    FusionStep("relu_clip_merged", _ruleset(rules.successive_relu_rule, rules.successive_clip_rule,
                                            rules.successive_clip_relu_rule,
                                            rules.successive_relu_clip_rule)),
    FusionStep("layer_norm", _layer_norm_if_opset17),
    FusionStep("global_avg_pool", pooling_rules.apply_to_model),
    # Rank-2 MatMul+Add only (the rule checks); ORT runs Gemm as one kernel with the bias.
    FusionStep("gemm", _ruleset(rules.matmul_add_to_gemm_rule, rules.transpose_b_matmul_add_to_gemm_rule)),
)

# Transformer fusions into ORT contrib ops, in the order onnxscript's fuse_xformers uses.
CONTRIB_STEPS: tuple[FusionStep, ...] = (
    FusionStep("gelu", erfgelu.fuse_erfgelu, _ms("Gelu")),
    FusionStep("rms_norm", rms_normalization.fuse_rms_normalization, _ms("SimplifiedLayerNormalization")),
    FusionStep("skip_layer_norm", skip_normalization.fuse_skip_layer_normalization,
               _ms("SkipLayerNormalization")),
    FusionStep("skip_rms_norm", skip_normalization.fuse_skip_rms_normalization,
               _ms("SkipSimplifiedLayerNormalization")),
    FusionStep("rotary_embedding", rotary_embedding.fuse_rotary_embedding, _ms("RotaryEmbedding")),
    # SDPA is an intermediate function that only MHA consumes; unconsumed ones are inlined back.
    FusionStep("sdpa", _with_shapes(sdpa.fuse_sdpa), _ms("MultiHeadAttention")),
    FusionStep("gqa", gqa.fuse_gqa, _ms("GroupQueryAttention")),
    FusionStep("mha", lambda m: mha.fuse_mha1(m) + mha.fuse_mha2(m), _ms("MultiHeadAttention")),
    FusionStep("mha_scale", mha_scale.fuse_mha_scale, _ms("MultiHeadAttention"), after="mha"),
    FusionStep("mha_bias", mha_bias.fuse_mha_bias, _ms("MultiHeadAttention"), after="mha"),
    FusionStep("attention", attention.fuse_attention, _ms("Attention"), after="mha"),
    # The other GELU spellings: tanh approximation into FastGelu, 0.5*x*(1+erf(..)) into Gelu.
    FusionStep("gelu_other_forms", gelu.fuse_gelu, _ms("FastGelu", "Gelu")),
    FusionStep("bias_gelu", bias_gelu.fuse_bias_gelu, _ms("BiasGelu")),
    FusionStep("sdpa_via_mha", sdpa_via_mha.replace_sdpa_by_mha, _ms("MultiHeadAttention")),
    FusionStep("fused_matmul", _ruleset(*fused_matmul_rule_sets.fused_matmul_rule_sets().rules),
               _ms("FusedMatMul")),
)
