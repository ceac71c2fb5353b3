"""Residual blocks of a model for `edgec inspect`: what prune-depth could remove, and why not elsewhere."""

from __future__ import annotations

from typing import Any

import onnx
import onnx_ir as ir

from edgec.passes.depth import discover_blocks


def list_blocks(proto: onnx.ModelProto) -> list[dict[str, Any]]:
    """Transformer layers, then every residual/dense sub-block, in graph order, as plain dicts.

    Each dict has name, kind (layer | attention | ffn | residual | dense), removable, reason, entry,
    exit, nodes (count) and children (a layer's sub-blocks).
    """
    model = ir.serde.deserialize_model(proto)
    layers, subs = discover_blocks(model.graph)
    return [b.to_json() for b in [*layers, *subs]]
