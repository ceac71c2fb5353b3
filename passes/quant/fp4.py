"""fp4: simulated E2M1 weights with a per-block scale (NVFP4/MXFP4 family), to estimate accuracy."""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from edgec.core.errors import ConfigError
from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.quant.common import replace_model
from edgec.passes.quant.lowbit import simulate_fp4_weights

logger = logging.getLogger(__name__)

NEEDS_RUNTIME = ("simulated: weights are rounded onto the E2M1 grid but stored in float32; the bundle "
                 "needs a runtime with FLOAT4E2M1 kernels (ORT 1.32 has none) to gain size or speed")


@dataclasses.dataclass(frozen=True)
class Fp4Config:
    """Options of fp4. ``block_size`` 32 is MXFP4's, 16 NVFP4's."""

    block_size: int = 32
    exclude_nodes: tuple[str, ...] = ()


@register_pass("fp4")
class Fp4Pass(EdgecPass[Fp4Config]):
    """Round Conv/Gemm/MatMul weights onto the E2M1 grid, one absmax/6 scale per block of the last axis.

    Weights of nodes inside If/Loop/Scan bodies are rounded too, wherever the weight is stored.
    A simulation on any target: the model keeps float32 weights and runs anywhere, and the record says
    the real thing needs an fp4 runtime. Activations, biases and graph I/O are never touched.
    """

    config_cls = Fp4Config
    # 4-bit weights cost real accuracy (cosine ~0.95-0.99 on CNNs); far lower means a broken encoding.
    tolerance = Tolerance(lossy=True, min_cosine=0.8)
    search_space = {"block_size": Knob((16, 32))}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Round the weights onto the fp4 grid in place and record that this is a simulation."""
        if self.config.block_size < 1:
            raise ConfigError(f"pass {self.name!r}: block_size {self.config.block_size} must be positive")
        proto = to_proto(model)
        count = simulate_fp4_weights(proto, self.config.block_size, set(self.config.exclude_nodes))
        self.record(weights=count, block_size=self.config.block_size, simulated=True, note=NEEDS_RUNTIME)
        self.skip("bundle", NEEDS_RUNTIME)
        logger.warning("fp4: %s", NEEDS_RUNTIME)
        replace_model(model, proto)
        return ir.passes.PassResult(model, modified=count > 0)
