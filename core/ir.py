"""Conversions between onnx protos and onnx_ir models, model copies, and the feeds type."""

from __future__ import annotations

from typing import Any

import onnx
import onnx_ir as ir

# Input name -> an array, a list of arrays (a sequence input) or None (an absent optional input).
Feeds = dict[str, Any]


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize an IR model."""
    return ir.serde.serialize_model(model)


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    """Deserialize into a fresh IR model that shares nothing with other candidates."""
    return ir.serde.deserialize_model(proto)


def clone(model: ir.Model) -> ir.Model:
    """A copy that shares no value or tensor object with ``model``."""
    return to_ir(to_proto(model))
