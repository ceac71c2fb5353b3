"""Pad depthwise-conv channel groups to the target's channel multiple with zero channels (exact in float).

ORT's int8 depthwise kernel (QLinearConv, NHWC) has a fast path only when the channel count is a
multiple of 16 on x86: in a pw -> dw -> pw chain, 72 channels (5x5: 120) ran slower than fp32 and
80 channels (5x5: 128) faster; whole-model figures are in bench/RESULTS.md, Quantization. MobileNetV3-Large's
expanded widths are 72, 120, 184, 200. fp32 already pads them inside its NCHWc kernels; int8 must
get the padding in the graph.

A channel group is closed over the tensors that share the depthwise conv's channel axis: it may
hold channel-local ops (unary activations, Add/Mul of group tensors or per-channel constants,
GlobalAveragePool, depthwise convs) and is entered through group-1 Convs (their output channels
grow, zero filters) and left through group-1 Convs (their input channels grow, zero weights). Pad
channels then carry values no exit reads, so outputs are unchanged. Anything else (a Reshape, a
graph output, a Gemm) leaves the group as it is. Hand-written: no library pads channels.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.passes.ir_utils import proto_attribute

logger = logging.getLogger(__name__)

UNARY = frozenset({"Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Clip", "LeakyRelu", "Identity", "Tanh",
                   "QuickGelu"})
BINARY = frozenset({"Add", "Mul"})


@dataclasses.dataclass
class _Group:
    """One closed channel group: its tensors and the convs at its edges."""

    channels: int
    tensors: set[str] = dataclasses.field(default_factory=set)
    entries: set[str] = dataclasses.field(default_factory=set)  # group-1 convs writing a group tensor
    exits: dict[str, str] = dataclasses.field(default_factory=dict)  # conv name -> input it reads
    inner: set[str] = dataclasses.field(default_factory=set)  # nodes inside
    constants: set[str] = dataclasses.field(default_factory=set)  # per-channel constants to pad


def _group_of(node: onnx.NodeProto) -> int:
    return proto_attribute(node, "group", 1)


def _is_depthwise(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> bool:
    w = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    return w is not None and _group_of(node) > 1 and w.shape[1] == 1 and w.shape[0] == _group_of(node)


class _Walker:
    """Grows a group from one depthwise conv; ``failed`` names the first node that breaks it."""

    def __init__(self, proto: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.producer = {o: n for n in proto.graph.node for o in n.output}
        self.users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for node in proto.graph.node:
            for name in node.input:
                self.users[name].append(node)
        self.outputs = {o.name for o in proto.graph.output}
        self.failed: str | None = None

    def grow(self, seed: onnx.NodeProto, channels: int) -> _Group | None:
        group, todo = _Group(channels), [seed.input[0], seed.output[0]]
        group.inner.add(seed.name)
        while todo and self.failed is None:
            tensor = todo.pop()
            if tensor in group.tensors:
                continue
            if tensor in self.outputs or tensor in self.weights:
                self.failed = f"{tensor} is a graph output or constant"
                break
            group.tensors.add(tensor)
            todo += self._producer_side(group, tensor) + self._consumer_side(group, tensor)
        return None if self.failed else group

    def _producer_side(self, group: _Group, tensor: str) -> list[str]:
        node = self.producer.get(tensor)
        if node is None:
            self.failed = f"{tensor} is a graph input"
            return []
        if node.op_type == "Conv" and _group_of(node) == 1 and node.input[1] in self.weights:
            group.entries.add(node.name)
            return []
        return self._inner(group, node)

    def _consumer_side(self, group: _Group, tensor: str) -> list[str]:
        grown = []
        for node in self.users.get(tensor, []):
            if node.op_type == "Conv" and _group_of(node) == 1 and node.input[0] == tensor \
                    and node.input[1] in self.weights:
                group.exits[node.name] = tensor
            else:
                grown += self._inner(group, node)
        return grown

    def _inner(self, group: _Group, node: onnx.NodeProto) -> list[str]:
        """The tensors a channel-local node ties into the group (and marks it inner), or fails."""
        if node.name in group.inner:
            return []
        op, c = node.op_type, group.channels
        if op in UNARY or op == "GlobalAveragePool" or (op == "Conv" and _is_depthwise(node, self.weights)
                                                        and self.weights[node.input[1]].shape[0] == c):
            group.inner.add(node.name)
            extra = [i for i in node.input[1:] if i and i not in self.weights] if op != "Conv" else []
            if extra:
                self.failed = f"{node.name}: non-constant parameters"
            return [node.input[0], node.output[0]]
        if op in BINARY:
            group.inner.add(node.name)
            tied = [node.output[0]]
            for name in node.input:
                const = self.weights.get(name)
                if const is None:
                    tied.append(name)
                elif const.size > 1 and const.size != c or (const.size == c and const.ndim < 3):
                    self.failed = f"{node.name}: constant {name} of shape {const.shape} is not per-channel"
                elif const.size == c:
                    group.constants.add(name)
            return tied
        self.failed = f"{node.name} ({op}) is not channel-local"
        return []


def _pad_axis(array: np.ndarray, axis: int, extra: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths)


def _apply(proto: onnx.ModelProto, group: _Group, extra: int, weights: dict[str, np.ndarray]) -> None:
    """Grow every edge and inner conv by ``extra`` zero channels; each weight is padded once."""
    padded: dict[str, np.ndarray] = {}
    nodes = {n.name: n for n in proto.graph.node}

    def pad(name: str, axis: int) -> None:
        padded[name] = _pad_axis(padded.get(name, weights[name]), axis, extra)

    for name in group.entries:
        node = nodes[name]
        pad(node.input[1], 0)
        if len(node.input) > 2 and node.input[2]:
            pad(node.input[2], 0)
    for name in group.exits:
        pad(nodes[name].input[1], 1)
    for name in group.inner:
        node = nodes[name]
        if node.op_type == "Conv":
            pad(node.input[1], 0)
            if len(node.input) > 2 and node.input[2]:
                pad(node.input[2], 0)
            next(a for a in node.attribute if a.name == "group").i += extra
    for name in group.constants:
        const = weights[name]
        pad(name, const.ndim - 3)
    for init in proto.graph.initializer:
        if init.name in padded:
            init.CopyFrom(numpy_helper.from_array(padded[init.name].astype(weights[init.name].dtype), init.name))


def _shared(proto: onnx.ModelProto, group: _Group) -> str | None:
    """A weight of the group that some node outside it also reads (padding it would change that node)."""
    nodes = {n.name: n for n in proto.graph.node}
    mine = group.entries | set(group.exits) | group.inner
    owned = {i for name in mine for i in nodes[name].input if i in group.constants or i in _params(nodes[name])}
    for node in proto.graph.node:
        if node.name not in mine and owned & set(node.input):
            return node.name
    return None


def _params(node: onnx.NodeProto) -> set[str]:
    return set(node.input[1:3]) if node.op_type == "Conv" else set()


def pad_depthwise(proto: onnx.ModelProto, multiple: int) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Pad each depthwise group whose width is not a multiple of ``multiple``; returns (model, {dw: note})."""
    if multiple <= 1:
        return proto, {}
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    notes: dict[str, str] = {}
    done: set[str] = set()
    for node in list(proto.graph.node):
        if not _is_depthwise(node, weights) or node.name in done:
            continue
        channels = weights[node.input[1]].shape[0]
        extra = -channels % multiple
        if not extra:
            continue
        walker = _Walker(proto, weights)
        group = walker.grow(node, channels)
        shared = None if group is None else _shared(proto, group)
        why = walker.failed or (shared and f"weights shared with {shared}")
        if why or group is None:  # grow() returns None only when it failed
            notes[node.name] = f"kept {channels} channels: {why}"
            continue
        _apply(proto, group, extra, weights)
        weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        done |= group.inner
        notes[node.name] = f"{channels} -> {channels + extra} channels"
    _drop_stale_shapes(proto)
    return proto, notes


def _drop_stale_shapes(proto: onnx.ModelProto) -> None:
    # inferred shapes of the padded tensors are now wrong; ORT and the checker re-infer them
    del proto.graph.value_info[:]

