"""Channel dependency analysis on the IR: which tensors share a channel index, who makes and who reads it.

Every output channel set of a weight op (Conv, ConvTranspose, Gemm, MatMul with a constant weight)
is a *space*. Per-channel ops (activations, BatchNormalization, pooling, depthwise Conv and
ConvTranspose, elementwise ops with broadcast constants) carry their input's layout to their output;
an elementwise op between two tensors (residual Add, squeeze-excitation Mul) joins their spaces into
one *group*, whose members must keep the same channels in the same order. Concat on the channel axis
concatenates layouts without joining them. Flatten/Reshape into a feature axis keeps the channel and
counts the features per channel (``inner``). An op whose channel mapping is unknown freezes the
groups it reads, with the node named in ``frozen``. Tensors that no weight op produced (graph
inputs, embeddings) carry no layout and are never touched.

Split and Slice on the channel axis cut their input's layout at their offsets (``ChannelGraph.cut``
divides a space met in the middle, with every space joined to it); each output is the run of pieces
between two cuts, and the export rewrites the split sizes or slice bounds to the pruned widths.

A grouped Conv (1 < group < C_in) keeps its group count and prunes the same channels in every
group: its input is cut into ``group`` equal chunks, and the pieces of chunk k are joined to those
of chunk 0, so each group keeps the same local channel positions (hence the same count). The weight
then loses the same input columns (axis 1, a parameter over chunk 0's layout) in every group. When
input and output channels per group are equal, output channel k*m + a is tied to input channel
k*m + a: the conv is a per-channel op, like a depthwise one, whose weight rows follow the input's
layout. Otherwise its output is a new space cut into ``group`` joined chunks, produced by the conv.
Joining is stricter than needed (groups could keep different positions), but it is simple and exact.
A grouped ConvTranspose is handled the same way, its weight's rows indexing the input's channels
and its columns the output channels within a group.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgec.passes.ir_utils import (
    attribute,
    const_array,
    constant_value,
    initializer_value,
    input_of,
    name_of,
    static_shape,
)
from edgec.passes.pruning.records import ChannelGraph, Consumer, Layout, ParamUse, Producer

UNARY = frozenset({
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Neg",
    "Abs", "LeakyRelu", "Elu", "Selu", "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout",
    "Cast", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos", "PRelu", "ThresholdedRelu", "Celu",
    "IsNaN", "IsInf", "Not", "Sign",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "Where", "And", "Or",
                    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                   "GlobalLpPool"})
REDUCES = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                     "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare"})


def _label(node: ir.Node) -> str:
    return f"{node.name} ({node.op_type})"


class _Analyzer:
    """Walks the main graph once in topological order and fills a ChannelGraph."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.cg = ChannelGraph()
        self.why: str | None = None  # why the last handler refused its node, when it says
        self.handlers: dict[str, Callable[[ir.Node], bool]] = {
            "Conv": self._conv, "ConvTranspose": self._conv_transpose, "Gemm": self._gemm, "MatMul": self._matmul,
            "Split": self._split, "Slice": self._slice,
            "BatchNormalization": self._batchnorm, "Concat": self._concat, "Flatten": self._flatten,
            "Reshape": self._reshape, "Transpose": self._transpose, "Softmax": self._softmax,
            "LogSoftmax": self._softmax, "LayerNormalization": self._layernorm,
            "Resize": self._resize, "Upsample": self._resize,
        }

    def layout(self, value: ir.Value | None) -> Layout | None:
        return None if value is None or value.name is None else self.cg.layouts.get(value.name)

    def set(self, value: ir.Value, layout: Layout | None) -> None:
        if layout is not None and value.name is not None:
            self.cg.layouts[value.name] = layout

    def run(self) -> ChannelGraph:
        for node in self.graph:
            self.why = None
            if not self._handle(node):
                self._unknown(node)
        for out in self.graph.outputs:
            layout = self.layout(out)
            if layout is not None:
                self.cg.freeze(layout, f"{out.name} (graph output)")
        return self.cg

    def _handle(self, node: ir.Node) -> bool:
        if node.domain not in ("", "ai.onnx") or any(a.type == ir.AttributeType.GRAPH for a in
                                                     node.attributes.values()):
            return False
        ins = [self.layout(v) for v in node.inputs]
        if not any(ins) and node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            return True  # nothing channel-tracked flows through: leave it alone
        if node.op_type in ("Shape", "Size"):
            # Reads the dims, not the channels, and at run time it reads the pruned ones. Whatever is
            # computed from them meets the channel checks where it is used (a computed Reshape target or
            # a non-constant per-channel operand freezes its group there).
            return True
        if node.op_type in self.handlers:
            return self.handlers[node.op_type](node)
        if node.op_type in UNARY:
            return self._unary(node)
        if node.op_type in BINARY:
            return self._binary(node)
        if node.op_type in POOLS:
            return self._per_channel(node, required_axis=1)
        if node.op_type in REDUCES:
            return self._reduce(node)
        return False

    def _unknown(self, node: ir.Node) -> None:
        reason = _label(node) if self.why is None else f"{_label(node)}: {self.why}"
        for value in node.inputs:
            layout = self.layout(value)
            if layout is not None:
                self.cg.freeze(layout, reason)

    def _refuse(self, why: str) -> bool:
        """Refuse the node, with the reason its frozen groups report."""
        self.why = why
        return False

    def _unary(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        if layout is None or any(self.layout(v) for v in node.inputs[1:]):
            return False
        slope = initializer_value(node.inputs[1]) if node.op_type == "PRelu" else None
        if slope is not None and slope.size > 1:
            return False
        self.set(node.outputs[0], layout)
        return True

    def _per_channel(self, node: ir.Node, required_axis: int) -> bool:
        layout = self.layout(node.inputs[0])
        if layout is None or layout.axis != required_axis or layout.inner != 1 or len(node.outputs) != 1:
            return False
        self.set(node.outputs[0], layout)
        return True

    def _resize(self, node: ir.Node) -> bool:
        """Resize/Upsample is per channel when its scale on the channel axis is 1 (the YOLO/FPN upsample).

        Output sizes (rather than scales) name the channel count itself, which pruning would have to
        rewrite; those are refused.
        """
        layout = self.layout(node.inputs[0])
        if layout is None or layout.inner != 1 or any(self.layout(v) for v in node.inputs[1:]):
            return False
        scales_at = 1 if node.op_type == "Upsample" else 2
        scales = constant_value(node.inputs[scales_at]) if len(node.inputs) > scales_at else None
        sizes = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
        if scales is None and node.op_type == "Upsample":
            scales = np.asarray(attribute(node, "scales", None) or [], dtype=np.float32)
        if sizes is not None or scales is None or scales.size == 0:
            return self._refuse("resized to output sizes or to scales that are not constant")
        axes = attribute(node, "axes", None)
        rank = len(static_shape(node.inputs[0]) or []) or scales.size
        axes = list(range(scales.size)) if axes is None else [a % rank for a in axes]
        channel_scale = dict(zip(axes, scales.tolist(), strict=True)).get(layout.axis, 1.0)
        if channel_scale != 1.0:
            return self._refuse("resizes the channel axis")
        self.set(node.outputs[0], layout)
        return True

    def _batchnorm(self, node: ir.Node) -> bool:
        if not self._per_channel(node, 1) or any(initializer_value(v) is None for v in node.inputs[1:5]):
            return False
        for i in range(1, 5):
            self.cg.params.append(ParamUse(name_of(node), i, 0, name_of(node.outputs[0])))
        return True

    def _conv(self, node: ir.Node) -> bool:
        weight = initializer_value(node.inputs[1])
        if weight is None or not self._const_bias(node):
            return False
        groups = attribute(node, "group", 1)
        layout = self._input_layout(node, 1) if groups == 1 else self.layout(node.inputs[0])
        bias = self._bias(node)
        if layout is not None and (layout.axis != 1 or layout.inner != 1):
            return False
        if groups == 1:
            if layout is not None:
                self._consumer(node, layout, 1)
            self._producer(node, weight.shape[0], 0, bias, axis=1)
            return True
        if layout is not None and weight.shape[1] == 1 and groups == weight.shape[0] == self.cg.width(layout):
            return self._depthwise(node, bias)
        if weight.shape[0] % groups == 0 and (layout is None or weight.shape[1] * groups == self.cg.width(layout)):
            return self._grouped(node, groups, layout is not None, bias)
        return self._refuse(f"group = {groups} does not match the weight {list(weight.shape)}")

    def _const_bias(self, node: ir.Node) -> bool:
        return len(node.inputs) < 3 or node.inputs[2] is None or initializer_value(node.inputs[2]) is not None

    def _bias(self, node: ir.Node) -> str | None:
        return node.inputs[2].name if len(node.inputs) > 2 and node.inputs[2] is not None else None

    def _depthwise(self, node: ir.Node, bias: str | None) -> bool:
        # Output channel c reads input channel c only, so it is a per-channel op.
        self.cg.params.append(ParamUse(name_of(node), 1, 0, name_of(node.outputs[0])))
        if bias is not None:
            self.cg.params.append(ParamUse(name_of(node), 2, 0, name_of(node.outputs[0])))
        return self._per_channel(node, 1)

    def _grouped(self, node: ir.Node, groups: int, tracked: bool, bias: str | None) -> bool:
        """A grouped Conv: the same channels of every group are kept (see the module docstring)."""
        out, weight = node.outputs[0], const_array(node.inputs[1])  # checked by _conv
        if tracked:
            layout = self._chunked(name_of(input_of(node, 0)), groups)
            chunk = Layout(1, layout.pieces[: len(layout.pieces) // groups])
            self.cg.params.append(ParamUse(name_of(node), 1, 1, name_of(out), layout=chunk))
            if weight.shape[0] == self.cg.width(layout):  # as many outputs as inputs per group: per channel
                return self._depthwise(node, bias)
        self._producer(node, weight.shape[0], 0, bias, axis=1)
        self._chunked(name_of(out), groups)
        return True

    def _chunked(self, name: str, groups: int) -> Layout:
        """Cut a value's layout into ``groups`` equal chunks with the same pieces, joined chunk to chunk.

        Cutting one space also cuts the spaces joined to it, which may sit elsewhere in this layout,
        so the cuts repeat until every chunk has the same piece boundaries.
        """
        while True:
            layout = self.cg.layouts[name]
            size = self.cg.width(layout) // groups
            local = {at % size for at in self.cg.offsets(layout)}
            self.cg.cut(layout, sorted(k * size + at for k in range(groups) for at in local))
            if len(self.cg.layouts[name].pieces) == len(layout.pieces):
                break
        per_chunk = len(layout.pieces) // groups
        for k in range(1, groups):
            for i in range(per_chunk):
                self.cg.join(layout.pieces[i], layout.pieces[k * per_chunk + i])
        return layout

    def _conv_transpose(self, node: ir.Node) -> bool:
        """ConvTranspose: weight (C_in, C_out / group, k...): input channels on axis 0, outputs on axis 1."""
        weight = initializer_value(node.inputs[1])
        if weight is None or not self._const_bias(node):
            return False
        groups = attribute(node, "group", 1)
        layout = self._input_layout(node, 1) if groups == 1 else self.layout(node.inputs[0])
        if layout is not None and (layout.axis != 1 or layout.inner != 1):
            return False
        if groups == 1:
            if layout is not None:
                self._consumer(node, layout, 0)
            self._producer(node, weight.shape[1], 1, self._bias(node), axis=1)
            return True
        if layout is not None and weight.shape[1] == 1 and groups == weight.shape[0] == self.cg.width(layout):
            return self._depthwise(node, self._bias(node))
        if weight.shape[0] % groups == 0 and (layout is None or weight.shape[0] == self.cg.width(layout)):
            return self._grouped_transpose(node, groups, layout is not None, self._bias(node))
        return self._refuse(f"group = {groups} does not match the weight {list(weight.shape)}")

    def _grouped_transpose(self, node: ir.Node, groups: int, tracked: bool, bias: str | None) -> bool:
        """A grouped ConvTranspose: weight rows are input channels, columns the outputs within a group.

        As for a grouped Conv, inputs and outputs are cut into ``group`` joined chunks; every
        weight slice is then a parameter (rows over the input's layout, columns over chunk 0 of the
        output's), and an output with as many channels as the input is tied to it channel by channel.
        """
        out, weight = node.outputs[0], const_array(node.inputs[1])  # checked by _conv_transpose
        layout = self._chunked(name_of(input_of(node, 0)), groups) if tracked else None
        if layout is not None:
            self.cg.params.append(ParamUse(name_of(node), 1, 0, name_of(out), layout=layout))
        if layout is not None and weight.shape[1] * groups == self.cg.width(layout):
            self.set(out, layout)
        else:
            self.set(out, Layout(1, (self.cg.new_space(weight.shape[1] * groups),)))
            layout = self._chunked(name_of(out), groups)
        chunk = Layout(1, layout.pieces[: len(layout.pieces) // groups])
        self.cg.params.append(ParamUse(name_of(node), 1, 1, name_of(out), layout=chunk))
        if bias is not None:
            self.cg.params.append(ParamUse(name_of(node), 2, 0, name_of(out)))
        return True

    def _input_layout(self, node: ir.Node, axis: int) -> Layout | None:
        """The layout of a weight op's input; a computed tensor nobody tracked gets a frozen space of its own.

        Its channels stay whole and in order (how they map upstream is unknown: a LayerNorm over
        them, an unknown op), but each consumer may still read only some of them in unconstrained
        mode: UPSCALE's per-consumer masks. Graph inputs and constants are left alone.
        """
        value = input_of(node, 0)
        layout = self.layout(value)
        producer = value.producer()
        if layout is not None or producer is None or producer.op_type == "Constant" or value.const_value is not None:
            return layout
        shape = static_shape(value)
        if not shape:
            return None
        axis %= len(shape)
        space = self.cg.new_space(shape[axis])
        self.cg.frozen[space] = f"{_label(producer)}: output channels not tracked"
        layout = Layout(axis, (space,))
        self.set(value, layout)
        return layout

    def _consumer(self, node: ir.Node, layout: Layout, w_axis: int) -> None:
        weight = input_of(node, 1)
        w_shape = const_array(weight).shape  # an initializer: checked by the caller
        out_shape = static_shape(node.outputs[0]) or []
        macs = int(math.prod(out_shape) * math.prod(w_shape[1:] if w_axis == 1 else [1]))
        if node.op_type == "ConvTranspose":  # every input element meets every filter tap once
            macs = int(math.prod(static_shape(node.inputs[0]) or []) * math.prod(w_shape[1:]))
        elif node.op_type != "Conv":
            macs = int(math.prod(out_shape) * self.cg.width(layout) * layout.inner)
        self.cg.consumers.append(Consumer(name_of(node), name_of(input_of(node, 0)), name_of(weight), w_axis, layout,
                                          macs))

    def _producer(self, node: ir.Node, size: int, w_axis: int, bias: str | None, axis: int) -> None:
        space = self.cg.new_space(size)
        self.cg.producers.append(Producer(name_of(node), space, name_of(input_of(node, 1)), w_axis, bias))
        self.set(node.outputs[0], Layout(axis, (space,)))

    def _gemm(self, node: ir.Node) -> bool:
        weight = initializer_value(node.inputs[1])
        if weight is None or weight.ndim != 2 or attribute(node, "transA", 0):
            return False
        trans_b = attribute(node, "transB", 0)
        n_out = weight.shape[0] if trans_b else weight.shape[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        bias_array = initializer_value(bias)
        if bias is not None and (bias_array is None or bias_array.size not in (1, n_out)):
            return False
        layout = self._input_layout(node, 1)
        if layout is not None:
            if layout.axis != 1:
                return False
            self._consumer(node, layout, 1 if trans_b else 0)
        has_bias = bias is not None and bias_array is not None and bias_array.size == n_out and n_out > 1
        self._producer(node, n_out, 0 if trans_b else 1, bias.name if bias is not None and has_bias else None, axis=1)
        return True

    def _matmul(self, node: ir.Node) -> bool:
        weight = initializer_value(node.inputs[1])
        a_shape = static_shape(node.inputs[0])
        if weight is None or weight.ndim != 2 or a_shape is None or self.layout(node.inputs[1]):
            return False
        layout = self._input_layout(node, -1)
        if layout is not None:
            if layout.axis != len(a_shape) - 1:
                return False
            self._consumer(node, layout, 0)
        self._producer(node, weight.shape[1], 1, None, axis=len(a_shape) - 1)
        return True

    def _binary(self, node: ir.Node) -> bool:
        out_shape = static_shape(node.outputs[0])
        if out_shape is None:
            return False
        rank = len(out_shape)
        tracked = [(v, lay) for v in node.inputs if v is not None and (lay := self.layout(v)) is not None]
        axes = {lay.axis + rank - len(static_shape(v) or []) for v, lay in tracked}
        first = tracked[0][1]
        if len(axes) != 1 or any(lay.inner != 1 for _, lay in tracked):
            return False
        axis = axes.pop()
        if any(self.cg.width(lay) != self.cg.width(first) for _, lay in tracked):
            return False
        for index, value in enumerate(node.inputs):
            if self.layout(value) is None and not self._broadcast_operand(node, index, value, rank, axis):
                return False
        first = self._align([name_of(v) for v, _ in tracked])
        for value, _ in tracked[1:]:
            for a, b in zip(first.pieces, self.cg.layouts[name_of(value)].pieces, strict=True):
                self.cg.join(a, b)
        self.set(node.outputs[0], first.moved(axis))
        return True

    def _align(self, names: list[str]) -> Layout:
        """Cut the layouts of equally wide values until their pieces line up; returns the first one."""
        while True:
            count = sum(len(self.cg.layouts[n].pieces) for n in names)
            cuts = sorted({at for n in names for at in self.cg.offsets(self.cg.layouts[n])})
            for n in names:
                self.cg.cut(self.cg.layouts[n], cuts)
            if sum(len(self.cg.layouts[n].pieces) for n in names) == count:
                return self.cg.layouts[names[0]]

    def _broadcast_operand(self, node: ir.Node, index: int, value: ir.Value | None, rank: int, axis: int) -> bool:
        """An untracked operand is fine if it has size 1 on the channel axis or is a constant there."""
        shape = static_shape(value)
        if shape is None:
            return False
        pos = axis - (rank - len(shape))
        if pos < 0 or shape[pos] == 1:
            return True
        if initializer_value(value) is None:
            return False
        self.cg.params.append(ParamUse(name_of(node), index, pos, name_of(node.outputs[0])))
        return True

    def _reduce(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        in_shape = static_shape(node.inputs[0])
        axes = attribute(node, "axes", None)
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            const = constant_value(node.inputs[1])
            axes = None if const is None else const.tolist()
        if layout is None or in_shape is None or axes is None or layout.inner != 1:
            return False
        axes = [a % len(in_shape) for a in axes]
        if layout.axis in axes:
            return False
        keep = attribute(node, "keepdims", 1)
        self.set(node.outputs[0], layout.moved(layout.axis - (0 if keep else sum(a < layout.axis for a in axes))))
        return True

    def _concat(self, node: ir.Node) -> bool:
        rank = len(static_shape(node.outputs[0]) or [])
        axis = attribute(node, "axis", 0) % max(rank, 1)
        pieces: list[int] = []
        for value in node.inputs:
            layout = self.layout(value)
            shape = static_shape(value)
            if layout is None:
                if value is None or shape is None:  # a missing input has no shape either
                    return False
                space = self.cg.new_space(shape[axis])
                self.cg.frozen.setdefault(space, f"{_label(node)}: untracked input {value.name}")
                layout = Layout(axis, (space,))
            if layout.axis != axis or layout.inner != 1:
                return False
            pieces.extend(layout.pieces)
        self.set(node.outputs[0], Layout(axis, tuple(pieces)))
        return True

    def _split(self, node: ir.Node) -> bool:
        layout, shape = self.layout(node.inputs[0]), static_shape(node.inputs[0])
        if layout is None or shape is None:
            return False
        axis = attribute(node, "axis", 0) % len(shape)
        if axis != layout.axis:  # splits another axis: every part keeps the channels
            for out in node.outputs:
                self.set(out, layout)
            return True
        sizes = _split_sizes(node, shape[axis])
        if layout.inner != 1 or sizes is None:
            return self._refuse("split sizes not constant" if sizes is None else "split inside flattened features")
        bounds = np.cumsum([0, *sizes]).tolist()
        layout = self.cg.cut(layout, bounds[1:-1])
        for out, start, end in zip(node.outputs, bounds[:-1], bounds[1:], strict=True):
            self.set(out, self.cg.between(layout, start, end))
        self.cg.sections.append(name_of(node))
        return True

    def _slice(self, node: ir.Node) -> bool:
        layout, shape = self.layout(node.inputs[0]), static_shape(node.inputs[0])
        bounds = slice_bounds(node)
        if layout is None or shape is None or any(self.layout(v) for v in node.inputs[1:]):
            return False
        if bounds is None:
            return self._refuse("slice bounds not constant")
        if layout.axis not in [a % len(shape) for a in bounds[2]]:  # slices other axes only
            self.set(node.outputs[0], layout)
            return True
        start, end, step = channel_range(bounds, layout.axis, shape)
        if layout.inner != 1 or step != 1 or end <= start:
            return self._refuse("strided, empty or feature-level slice of channels")
        layout = self.cg.cut(layout, [start, end])
        self.set(node.outputs[0], self.cg.between(layout, start, end))
        self.cg.sections.append(name_of(node))
        return True

    def _flatten(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        shape = static_shape(node.inputs[0])
        if layout is None or shape is None or attribute(node, "axis", 1) % len(shape) != layout.axis:
            return False
        self.set(node.outputs[0], layout.moved(1, layout.inner * math.prod(shape[layout.axis + 1:])))
        return True

    def _reshape(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        shape, out = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        if layout is None or shape is None or out is None or constant_value(node.inputs[1]) is None:
            return False
        axis = layout.axis
        if out == shape:
            self.cg.reshapes.append(name_of(node))  # its shape constant may spell the channel count
            self.set(node.outputs[0], layout)
            return True
        # Only "merge the channel axis with everything after it" (a flatten) has a clear mapping.
        if len(out) != axis + 1 or out[:axis] != shape[:axis]:
            return False
        self.cg.reshapes.append(name_of(node))
        self.set(node.outputs[0], layout.moved(axis, layout.inner * math.prod(shape[axis + 1:])))
        return True

    def _transpose(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        perm = attribute(node, "perm", None)
        if layout is None or perm is None or layout.inner != 1:
            return False
        self.set(node.outputs[0], layout.moved(list(perm).index(layout.axis)))
        return True

    def _softmax(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        rank = len(static_shape(node.inputs[0]) or [])
        if layout is None or rank == 0 or attribute(node, "axis", -1) % rank == layout.axis:
            return False
        self.set(node.outputs[0], layout)
        return True

    def _layernorm(self, node: ir.Node) -> bool:
        layout = self.layout(node.inputs[0])
        rank = len(static_shape(node.inputs[0]) or [])
        if layout is None or rank == 0 or layout.axis >= attribute(node, "axis", -1) % rank or len(node.outputs) > 1:
            return False
        self.set(node.outputs[0], layout)
        return True


def _split_sizes(node: ir.Node, total: int) -> list[int] | None:
    """The sizes of a Split's outputs: its ``split`` input or attribute, else equal parts (the last smaller)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        const = constant_value(node.inputs[1])
        return None if const is None else [int(x) for x in const.tolist()]
    if node.attributes.get("split") is not None:
        return [int(x) for x in node.attributes["split"].value]
    parts = len(node.outputs)
    size = -(-total // parts)
    return [min(size, total - k * size) for k in range(parts)]


def slice_bounds(node: ir.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice with constant bounds, else None."""
    consts = [constant_value(v) for v in node.inputs[1:5]]
    if len(consts) < 2 or consts[0] is None or consts[1] is None:
        return None
    if any(v is not None and c is None for v, c in zip(node.inputs[3:5], consts[2:], strict=False)):
        return None
    starts, ends = consts[0].tolist(), consts[1].tolist()
    axes = consts[2].tolist() if len(consts) > 2 and consts[2] is not None else list(range(len(starts)))
    steps = consts[3].tolist() if len(consts) > 3 and consts[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


def channel_range(bounds: tuple[list[int], list[int], list[int], list[int]], axis: int,
                  shape: list[int]) -> tuple[int, int, int]:
    """(start, end, step) a Slice takes on ``axis``, clamped as ONNX does (for step 1)."""
    starts, ends, axes, steps = bounds
    i = [a % len(shape) for a in axes].index(axis)
    dim = shape[axis]

    def clamp(x: int) -> int:
        return min(max(x + dim if x < 0 else x, 0), dim)

    return clamp(starts[i]), clamp(ends[i]), steps[i]


def analyze(model: ir.Model) -> ChannelGraph:
    """Channel spaces, groups, producers, consumers and frozen groups of the main graph.

    Value shapes must be known (run shape inference first).
    """
    return _Analyzer(model.graph).run()
