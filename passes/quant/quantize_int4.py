"""quantize-int4: weight-only block quantization of MatMul to ORT's MatMulNBits (its MatMulNBitsQuantizer)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Literal

import onnx_ir as ir
from onnxruntime.quantization import matmul_nbits_quantizer as nbits

from edgec.core.errors import ConfigError
from edgec.core.ir import to_proto
from edgec.passes.base import EdgecPass, Knob, Tolerance, register_pass
from edgec.passes.quant.common import INT4, replace_model, require_format
from edgec.passes.quant.subgraphs import walk


@dataclasses.dataclass(frozen=True)
class QuantizeInt4Config:
    """Options of quantize-int4. RTN needs no data; HQQ is ORT's calibration-free alternative."""

    block_size: int = 32
    symmetric: bool = True
    algorithm: Literal["rtn", "hqq"] = "rtn"
    accuracy_level: int | None = None
    exclude_nodes: tuple[str, ...] = ()


@register_pass("quantize-int4")
class QuantizeInt4Pass(EdgecPass[QuantizeInt4Config]):
    """Replace MatMuls with constant weights by com.microsoft.MatMulNBits (4-bit blocks, float scales).

    MatMuls in If/Loop/Scan bodies are replaced too, whether their weight is the body's or an outer one.
    For size (and GPU/mobile speed): on x86 CPU it gains under
    10% on the transformers (bench/RESULTS.md, Quantization).
    Conv, Gemm, embeddings (Gather) and activations are never touched.
    """

    config_cls = QuantizeInt4Config
    # 4-bit RTN weights: cosine ~0.998 on BERT-like; broken packing gives ~0.
    tolerance = Tolerance(lossy=True, min_cosine=0.9)
    search_space = {"block_size": Knob((16, 32, 64, 128)), "symmetric": Knob((True, False))}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Replace the constant-weight MatMuls by MatMulNBits in place."""
        require_format(self.ctx, INT4, self.name)
        cfg = self.config
        if cfg.block_size < 16 or cfg.block_size & (cfg.block_size - 1):
            raise ConfigError(f"pass {self.name!r}: block_size {cfg.block_size} must be a power of two >= 16")
        if cfg.algorithm == "hqq":
            algo = nbits.HQQWeightOnlyQuantConfig(block_size=cfg.block_size)
        else:
            # ORT's own blockwise round-to-nearest: unlike its RTNWeightOnlyQuantConfig (Intel Neural
            # Compressor's code, main graph only) it quantizes MatMuls inside If/Loop/Scan bodies too,
            # reading weights from the graphs around them. Same accuracy (BERT-like 0.9982 vs 0.9981).
            algo = nbits.DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                                      accuracy_level=cfg.accuracy_level)
        quantizer = nbits.MatMulNBitsQuantizer(
            to_proto(model), block_size=cfg.block_size, is_symmetric=cfg.symmetric,
            accuracy_level=cfg.accuracy_level, nodes_to_exclude=list(cfg.exclude_nodes), algo_config=algo)
        with contextlib.redirect_stdout(io.StringIO()):  # its RTN loop prints a progress bar
            quantizer.process()
        proto = quantizer.model.model
        paths = [path for path, _, node, _ in walk(proto.graph) if node.op_type == "MatMulNBits"]
        count = len(paths)
        if count == 0:
            self.skip("model", "no MatMul with a constant 2-D weight to quantize")
        self.record(matmulnbits=count, algorithm=cfg.algorithm, block_size=cfg.block_size,
                    in_subgraphs=sum("/" in p for p in paths))
        replace_model(model, proto)
        return ir.passes.PassResult(model, modified=count > 0)
