"""Accuracy recovery after channel pruning without training: bias compensation and ridge weight refits.

Both methods make each affected consumer (Conv/Gemm/MatMul reading pruned or changed channels)
reproduce its *original* output from the inputs it sees in the *pruned* model, on calibration feeds:

- ``bias``: keep the weights, reset the bias so the output mean matches: b' = E[y_orig] - W' E[x'].
  For a layer whose kept inputs are unchanged this is exactly the removed channels' mean
  contribution, sum_j mean(x_j) W[:, j] (padding included, as patches are averaged); further down
  it also absorbs the mean shift upstream pruning left in the inputs.
- ``lstsq``: refit the kept weights and the bias by ridge regression of y_orig on [x', 1] (ThiNet,
  AIMET channel pruning), pulled towards the pruned weights: min |Y - X'W - c|^2 + lam |W - W'|^2,
  lam = ridge * mean eigenvalue of the input covariance. The bias is not regularized.

Consumers are fixed in waves (a consumer's wave is the number of consumers on its longest input
path): a wave's inputs are measured on the model with every earlier wave already fixed, so each
layer also corrects what upstream pruning changed. Each wave costs one ORT session over the feeds.
Conv inputs are unfolded into patches (im2col) in numpy: no runtime op exposes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from edgec.passes.ir_utils import add_initializer, const_array, input_of, name_of
from edgec.passes.pruning.activations import capture_values
from edgec.passes.pruning.channel_export import value_perm
from edgec.passes.pruning.plan import Plan
from edgec.passes.pruning.records import ChannelGraph, Consumer, Layout

METHODS = ("none", "bias", "lstsq")
MAX_ROWS = 256  # patch rows per feed and layer kept for the regression (the means use every row)


@dataclasses.dataclass
class _Layer:
    """One consumer to fix: its geometry and the original outputs it must reproduce."""

    consumer: Consumer
    out_order: np.ndarray
    conv: tuple[tuple[int, ...], ...] | None  # kernel, strides, pads, dilations for a 2-D Conv
    y_sum: np.ndarray | None = None
    count: int = 0
    rows: list[np.ndarray] = dataclasses.field(default_factory=list)
    y_rows: list[np.ndarray] = dataclasses.field(default_factory=list)


def _ints(node: ir.Node, name: str, default: Sequence[int]) -> tuple[int, ...]:
    attr = node.attributes.get(name)
    return tuple(default) if attr is None else tuple(attr.value)


def _geometry(node: ir.Node) -> tuple[tuple[tuple[int, ...], ...] | None, str | None]:
    """(Conv geometry or None, reason the layer cannot be refit or None)."""
    if node.op_type == "Gemm":
        attr = node.attributes.get("beta")
        return None, "Gemm with beta = 0" if attr is not None and attr.value == 0 else None
    if node.op_type == "ConvTranspose":
        return None, "ConvTranspose is not refit"
    if node.op_type != "Conv":
        return None, None
    attr = node.attributes.get("group")
    if attr is not None and attr.value != 1:
        return None, "grouped Conv is not refit"
    kernel = tuple(const_array(node.inputs[1]).shape[2:])
    pad_attr = node.attributes.get("auto_pad")
    if len(kernel) != 2 or (pad_attr is not None and pad_attr.value not in ("NOTSET", "VALID")):
        return None, "only 2-D Conv with explicit pads is refit"
    return (kernel, _ints(node, "strides", (1, 1)), _ints(node, "pads", (0, 0, 0, 0)),
            _ints(node, "dilations", (1, 1))), None


def _rows_of(x: np.ndarray, conv: tuple[tuple[int, ...], ...] | None) -> np.ndarray:
    """The consumer's input as a matrix: one row per output position, one column per weight column."""
    if conv is None:
        return x.reshape(-1, x.shape[-1]).astype(np.float64)
    (kh, kw), (sh, sw), pads, (dh, dw) = conv
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw).astype(np.float64)


def _out_rows(y: np.ndarray, conv: tuple | None) -> np.ndarray:
    return (np.moveaxis(y, 1, -1) if conv is not None else y).reshape(-1, y.shape[1 if conv else -1])


def _affected(model: ir.Model, cg: ChannelGraph, plan: Plan) -> dict[str, int]:
    """Consumers whose input changed (read fewer channels, or downstream of one), with their wave."""
    consumers = {c.node: c for c in cg.consumers}
    depth: dict[str, int] = {}
    tainted: set[str] = set()
    waves: dict[str, int] = {}
    for node in model.graph:
        ins = [name_of(v) for v in node.inputs if v is not None]
        d = max((depth.get(v, 0) for v in ins), default=0)
        hit = any(v in tainted for v in ins)
        c = consumers.get(name_of(node))
        if c is not None:
            hit = hit or len(plan.reads[c.node]) < cg.width(c.layout)
            if hit:
                waves[name_of(node)] = d
            d += 1
        for out in node.outputs:
            depth[name_of(out)] = d
            if hit or (c is not None and _dead_outputs(cg, plan, name_of(node))):
                tainted.add(name_of(out))
    return waves


def _dead_outputs(cg: ChannelGraph, plan: Plan, node: str) -> bool:
    prod = next(p for p in cg.producers if p.node == node)
    return any(len(plan.live[cg.group(s)]) < cg.space_sizes[s] for s in prod.spaces)


def _measure_targets(original: ir.Model, layers: list[_Layer], feeds: Sequence[dict[str, np.ndarray]],
                     seed: int) -> None:
    """Original outputs of every layer: their sum over all rows and a fixed sample of rows per feed."""
    nodes = {n.name: n for n in original.graph}
    names = [name_of(nodes[lay.consumer.node].outputs[0]) for lay in layers]
    rng = np.random.default_rng(seed)
    for outs in capture_values(original, names, feeds):
        for lay, name in zip(layers, names, strict=True):
            y = _out_rows(outs[name], lay.conv)[:, lay.out_order].astype(np.float64)
            lay.y_sum = y.sum(0) if lay.y_sum is None else lay.y_sum + y.sum(0)
            lay.count += len(y)
            pick = np.sort(rng.choice(len(y), min(len(y), MAX_ROWS), replace=False))
            lay.rows.append(pick)
            lay.y_rows.append(y[pick])


def _weight_matrix(node: ir.Node, c: Consumer) -> np.ndarray:
    w = const_array(node.inputs[1]).astype(np.float64)
    return w.reshape(w.shape[0], -1) if c.w_axis == 1 else w.T


def _gain(node: ir.Node, name: str) -> float:
    attr = node.attributes.get(name) if node.op_type == "Gemm" else None
    return 1.0 if attr is None else float(attr.value)


@dataclasses.dataclass
class _Inputs:
    """A layer's pruned-model inputs over the feeds: the sum of all rows, and the sampled rows."""

    total: np.ndarray | None = None
    count: int = 0
    rows: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, x: np.ndarray, pick: np.ndarray) -> None:
        self.total = x.sum(0) if self.total is None else self.total + x.sum(0)
        self.count += len(x)
        self.rows.append(x[pick])


def _fit(lay: _Layer, xs: _Inputs, w0: np.ndarray, alpha: float, method: str,
         ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """New (weight matrix [out, in], output offset [out]) for one layer from its pruned inputs."""
    if method == "bias":
        assert lay.y_sum is not None and xs.total is not None  # both were measured on the (non-empty) feeds
        return w0, lay.y_sum / lay.count - alpha * (xs.total / xs.count) @ w0.T
    a = np.concatenate(xs.rows)
    y = np.concatenate(lay.y_rows)
    mu_a, mu_y = a.mean(0), y.mean(0)
    a, y = a - mu_a, y - mu_y
    cov = a.T @ a
    lam = ridge * max(float(np.trace(cov)) / max(len(cov), 1), 1e-12)
    rhs = a.T @ y + lam * alpha * w0.T
    try:
        sol = np.linalg.solve(cov + lam * np.eye(len(cov)), rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(cov + lam * np.eye(len(cov)), rhs, rcond=None)[0]
    w = sol.T / alpha
    return w, mu_y - alpha * mu_a @ w.T


def _set_const(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.Tensor(np.ascontiguousarray(array.astype(const_array(value).dtype)),
                                  name=value.name)


def _write(model: ir.Model, node: ir.Node, c: Consumer, w: np.ndarray, offset: np.ndarray) -> str | None:
    """Store a refit layer: weights in place, the offset as its bias (or a bias Add after a MatMul)."""
    weight = input_of(node, 1)
    old = const_array(weight)
    _set_const(weight, w.reshape(old.shape) if c.w_axis == 1 else w.T)
    dtype = old.dtype
    bias = offset / _gain(node, "beta")
    if node.op_type in ("Conv", "Gemm"):
        old_bias = node.inputs[2] if len(node.inputs) > 2 else None
        if old_bias is not None and const_array(old_bias).size == len(bias):
            _set_const(old_bias, bias)
        else:
            node.resize_inputs(3)
            node.replace_input_with(2, add_initializer(model.graph, f"{node.name}__recovered_bias", bias.astype(dtype)))
        return None
    return _offset_matmul(model, node, offset.astype(dtype))


def _offset_matmul(model: ir.Model, node: ir.Node, offset: np.ndarray) -> str | None:
    """Add ``offset`` to a MatMul's output: into the bias Add that follows it, else a new Add."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and uses[0][0].op_type == "Add":
        add = uses[0][0]
        other = add.inputs[1 - uses[0][1]]
        if other is not None and other.const_value is not None and tuple(other.const_value.shape) == offset.shape:
            _set_const(other, other.const_value.numpy() + offset)
            return None
    if out.is_graph_output():
        return "MatMul output is a graph output: no place for a bias"
    const = add_initializer(model.graph, f"{node.name}__recovered_bias", offset)
    add = ir.node("Add", [out, const], name=f"{node.name}__recovered_add")
    add.outputs[0].name = f"{out.name}__recovered"
    for user, index in uses:
        user.replace_input_with(index, add.outputs[0])
    model.graph.insert_after(node, add)
    return None


def recover(model: ir.Model, original: ir.Model, cg: ChannelGraph, plan: Plan, orders: dict[int, np.ndarray],
            feeds: Sequence[dict[str, np.ndarray]], method: str, ridge: float, seed: int = 0,
            ) -> tuple[int, list[tuple[str, str]]]:
    """Fix, in place, the pruned ``model``'s affected consumers from ``original``'s outputs on ``feeds``.

    Returns how many layers were fixed, and (node, reason) for those left alone.
    """
    nodes = {n.name: n for n in model.graph}
    waves = _affected(model, cg, plan)
    layers, skipped = [], []
    for c in cg.consumers:
        if c.node not in waves:
            continue
        conv, reason = _geometry(nodes[c.node])
        if reason:
            skipped.append((c.node, reason))
            continue
        prod = next(p for p in cg.producers if p.node == c.node)
        layers.append(_Layer(c, value_perm(cg, Layout(0, prod.spaces), orders), conv))
    if not layers:
        return 0, skipped
    _measure_targets(original, layers, feeds, seed)
    done = 0
    for wave in sorted({waves[lay.consumer.node] for lay in layers}):
        members = [lay for lay in layers if waves[lay.consumer.node] == wave]
        names = [name_of(input_of(nodes[lay.consumer.node], 0)) for lay in members]
        inputs = [_Inputs() for _ in members]
        for i, outs in enumerate(capture_values(model, names, feeds)):
            for lay, name, acc in zip(members, names, inputs, strict=True):
                acc.add(_rows_of(outs[name], lay.conv), lay.rows[i])
        for lay, acc in zip(members, inputs, strict=True):
            node = nodes[lay.consumer.node]
            w0 = _weight_matrix(node, lay.consumer)
            w, offset = _fit(lay, acc, w0, _gain(node, "alpha"), method, ridge)
            reason = _write(model, node, lay.consumer, w, offset)
            if reason:
                skipped.append((name_of(node), reason))
            else:
                done += 1
    return done, skipped
