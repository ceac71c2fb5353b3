"""ReplaceMe: a removed span replaced by one linear map fitted by ridge least squares on calibration activations.

The map z = x T + b acts on the channel axis. It is folded into the weights of the ops that read the
span's output when all of them are linear in it (MatMul, Gemm, 1x1 Conv), so no op is added; otherwise
one op carries it (a 1x1 Conv on NCHW channels, MatMul + Add on the last axis). Written here because
no maintained library fits and folds such maps on ONNX graphs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from edgec.passes.depth.blocks import Block
from edgec.passes.ir_utils import add_initializer, const_array, initializer_value

if TYPE_CHECKING:
    from onnx_ir._core import Usage  # what Value.uses() yields; onnx_ir exports it under no public name


@dataclasses.dataclass(frozen=True)
class LinearMap:
    """z = x @ weight + bias along ``axis`` (1: NCHW channels, -1: last axis)."""

    weight: np.ndarray  # [C, C]
    bias: np.ndarray  # [C]
    axis: int


def as_rows(acts: list[np.ndarray], axis: int) -> np.ndarray:
    """Stack activations into [positions, channels] rows (float64)."""
    rows = [np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]) for a in acts]
    return np.concatenate(rows).astype(np.float64)


def fit_linear(inputs: list[np.ndarray], targets: list[np.ndarray], axis: int, ridge: float) -> LinearMap:
    """Ridge least squares from ``inputs`` to ``targets``, shrunk toward the identity (plain removal).

    The penalty is ``ridge`` times the mean squared row norm, so it weighs like ``ridge`` extra rows
    per channel: strong when rows are few for the channels (MiniLM: 384 channels, ~1-2k token rows,
    most of them padding), negligible for CNNs (every pixel is a row). Shrinking toward the identity
    rather than zero keeps the fit close to plain bypassing where data is thin. Measured: MiniLM
    layers want a heavy penalty (ridge 8: 1.3x the row energy per channel at 36 sentences), the
    MNIST CNN a light one (ridge 8: 0.04x at 256 images).
    """
    x, y = as_rows(inputs, axis), as_rows(targets, axis)
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc
    eye = np.eye(gram.shape[0])
    lam = ridge * max(float(np.trace(gram)) / len(x), 1e-12)
    weight = np.linalg.solve(gram + lam * eye, xc.T @ (y - my) + lam * eye)
    return LinearMap(weight.astype(np.float32), (my - mx @ weight).astype(np.float32), axis)


def extend_over_norm(graph: ir.Graph, block: Block) -> Block:
    """The span a fitted map replaces: ``block`` plus a post-norm LayerNormalization that alone reads it.

    Measured on MiniLM: fitting x -> LayerNorm(x + f(x)) beats fitting x -> x + f(x) and keeping the
    norm, whose input has a few huge channels that dominate a least-squares fit.
    """
    add = next(n for n in graph if n.name == block.nodes[-1])
    uses = list(add.outputs[0].uses())
    if len(uses) != 1 or uses[0].node.op_type != "LayerNormalization" or add.outputs[0].is_graph_output():
        return block
    norm = uses[0].node
    if norm.outputs[0].is_graph_output():
        return block
    return dataclasses.replace(block, exit=norm.outputs[0].name or "", nodes=(*block.nodes, norm.name or ""))


def _bias_add(node: ir.Node) -> ir.Node | None:
    """The lone Add that adds a constant vector to ``node``'s output (a Linear's bias), if any."""
    uses = list(node.outputs[0].uses())
    if len(uses) == 1 and uses[0].node.op_type == "Add":
        add = uses[0].node
        other = add.inputs[1 - uses[0].idx]
        bias = initializer_value(other)
        if bias is not None and bias.ndim == 1:
            return add
    return None


def _foldable(use: Usage, axis: int) -> bool:
    node, idx = use.node, use.idx
    if node.domain not in ("", "ai.onnx") or idx != 0:
        return False
    weight = initializer_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return False
    if node.op_type == "MatMul":
        return axis == -1 and weight.ndim == 2 and _bias_add(node) is not None
    if node.op_type == "Gemm":
        return axis == -1 and not node.attributes.get_int("transA", 0)
    if node.op_type == "Conv":
        return (axis == 1 and node.attributes.get_int("group", 1) == 1 and all(d == 1 for d in weight.shape[2:])
                and not any(node.attributes.get_ints("pads", [])))
    return False


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    return add_initializer(graph, name, np.ascontiguousarray(array, dtype=np.float32))


def _fold_into(graph: ir.Graph, node: ir.Node, lin: LinearMap, tag: str) -> None:
    """Rewrite ``node``'s weight (and bias) so that it computes op(x T + b) from x."""
    w = const_array(node.inputs[1]).astype(np.float64)  # an initializer: checked by _foldable
    t, b = lin.weight.astype(np.float64), lin.bias.astype(np.float64)
    if node.op_type == "MatMul":
        add = _bias_add(node)
        assert add is not None  # checked by _foldable
        slot = 1 - next(u.idx for u in node.outputs[0].uses())
        add.replace_input_with(slot, _initializer(graph, f"{tag}_bias", const_array(add.inputs[slot]) + b @ w))
        node.replace_input_with(1, _initializer(graph, f"{tag}_weight", t @ w))
        return
    if node.op_type == "Gemm":
        trans_b = node.attributes.get_int("transB", 0)
        new_w = w @ t.T if trans_b else t @ w
        bw = w @ b if trans_b else b @ w
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        old_c = initializer_value(node.inputs[2]) if len(node.inputs) > 2 else None
        c = (old_c * beta if old_c is not None else 0.0) + alpha * bw
        node.replace_input_with(1, _initializer(graph, f"{tag}_weight", new_w))
        _set_input(node, 2, _initializer(graph, f"{tag}_bias", c / beta))
        return
    o = w.shape[0]
    w2 = w.reshape(o, -1)
    old_bias = initializer_value(node.inputs[2]) if len(node.inputs) > 2 else None
    node.replace_input_with(1, _initializer(graph, f"{tag}_weight", (w2 @ t.T).reshape(w.shape)))
    _set_input(node, 2, _initializer(graph, f"{tag}_bias", (0.0 if old_bias is None else old_bias) + w2 @ b))


def _set_input(node: ir.Node, idx: int, value: ir.Value) -> None:
    if len(node.inputs) <= idx:
        node.resize_inputs(idx + 1)
    node.replace_input_with(idx, value)


def apply_linear(graph: ir.Graph, entry: ir.Value, exit_value: ir.Value, before: ir.Node, lin: LinearMap,
                 tag: str) -> str:
    """Route ``exit_value``'s readers to ``lin`` applied to ``entry``: folded if possible, else one op.

    Returns how: 'folded into <node names>' or 'inserted <op>'.
    """
    uses = list(exit_value.uses())
    if uses and not exit_value.is_graph_output() and all(_foldable(u, lin.axis) for u in uses):
        names = []
        for use in uses:
            _fold_into(graph, use.node, lin, f"{tag}_{use.node.name}")
            names.append(use.node.name or use.node.op_type)
        exit_value.replace_all_uses_with(entry)
        return f"folded into {', '.join(names)}"
    rank = len(entry.shape) if entry.shape is not None else 2
    if lin.axis == 1:
        kernel = lin.weight.T.reshape(lin.weight.shape + (1,) * (rank - 2))
        nodes = [ir.node("Conv", [entry, _initializer(graph, f"{tag}_weight", kernel),
                                  _initializer(graph, f"{tag}_bias", lin.bias)], name=f"{tag}_conv")]
    else:
        matmul = ir.node("MatMul", [entry, _initializer(graph, f"{tag}_weight", lin.weight)], name=f"{tag}_matmul")
        nodes = [matmul, ir.node("Add", [matmul.outputs[0], _initializer(graph, f"{tag}_bias", lin.bias)],
                                 name=f"{tag}_add")]
    out = nodes[-1].outputs[0]
    out.name, out.shape, out.type = f"{tag}_out", exit_value.shape, exit_value.type
    graph.insert_before(before, nodes)
    exit_value.replace_all_uses_with(out)
    return f"inserted {nodes[0].op_type}"
