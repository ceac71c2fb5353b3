"""Quantization: int8 (static, dynamic), int4 weight-only, fp16, fp8, fp4 and per-node mixed precision.

Public API: the passes and their configs, ``plot_ranking`` and ``plot_precisions`` (the per-node
sensitivity and precision charts a build writes). ORT's quantization tooling does the quantizing; the
other modules are edgec's orchestration around it: ``static`` and ``calib`` (quantize_static and its data
reader), ``placement`` and ``int8ops`` (which nodes get int8 on the target), ``sensitivity`` (per-node error ranking),
``precision`` (what a target's formats allow), ``lowbit`` (fp8/fp4 rounding), ``pad``, ``attention``
and ``subgraphs`` (graph shapes ORT's quantizer cannot take as they are), ``concat_ranges`` (Concats whose
inputs' ranges one int8 scale cannot hold), ``analysis`` and ``common``.
"""

from __future__ import annotations

from edgec.passes.quant.fp4 import Fp4Config, Fp4Pass
from edgec.passes.quant.fp8 import Fp8Config, Fp8Pass
from edgec.passes.quant.fp16 import Fp16Config, Fp16Pass
from edgec.passes.quant.mixed_precision import MixedPrecisionConfig, MixedPrecisionPass
from edgec.passes.quant.quantize_dynamic import QuantizeDynamicConfig, QuantizeDynamicPass
from edgec.passes.quant.quantize_int4 import QuantizeInt4Config, QuantizeInt4Pass
from edgec.passes.quant.quantize_int8 import QuantizeInt8Config, QuantizeInt8Pass
from edgec.passes.quant.sensitivity import plot_precisions, plot_ranking

__all__ = [
    "Fp4Config", "Fp4Pass", "Fp8Config", "Fp8Pass", "Fp16Config", "Fp16Pass", "MixedPrecisionConfig",
    "MixedPrecisionPass", "QuantizeDynamicConfig", "QuantizeDynamicPass", "QuantizeInt4Config",
    "QuantizeInt4Pass", "QuantizeInt8Config", "QuantizeInt8Pass", "plot_precisions", "plot_ranking",
]
