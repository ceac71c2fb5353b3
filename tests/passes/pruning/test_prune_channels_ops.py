"""prune-channels through ConvTranspose, grouped Conv, and Split/Slice on the channel axis (issue 5)."""

from __future__ import annotations

import functools
import io
import pathlib
import tempfile

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript
import pytest
import torch
from helpers import outputs
from torch import nn

from edgec.compiler.pipeline import run_pipeline
from edgec.models._export import export_onnx
from edgec.passes.base import create_pass
from edgec.passes.context import BuildContext
from edgec.passes.pruning.channel_export import apply_plan, choose_orders
from edgec.passes.pruning.channel_graph import analyze
from edgec.passes.pruning.plan import make_plan, zero_pruned
from edgec.runtime.session import compare_outputs
from edgec.targets.registry import get_target

# Zeroed channels contribute exact zeros; only summation order differs after pruning.
ZERO_RTOL = 1e-5
PLANS = [("constrained", "budgeted"), ("unconstrained", "budgeted"), ("unconstrained", "per-consumer"),
         ("constrained", "global"), ("unconstrained", "global")]


class Deconv(nn.Module):
    """Conv -> ConvTranspose (group 1) -> depthwise ConvTranspose -> Conv: a decoder-style upsampler."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 24, 4, stride=2, padding=1)
        self.dw = nn.ConvTranspose2d(24, 24, 3, padding=1, groups=24)
        self.head = nn.Conv2d(24, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dw(torch.relu(self.up(self.conv(x))))))


class GroupedDeconv(nn.Module):
    """Grouped ConvTransposes: 16 -> 16 in 4 groups (tied channel by channel), then 16 -> 24 (4 -> 6 per group)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(16, 16, 2, stride=2, groups=4)
        self.up2 = nn.ConvTranspose2d(16, 24, 3, padding=1, groups=4)
        self.head = nn.Conv2d(24, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up2(torch.relu(self.up1(self.conv(x))))))


class Grouped(nn.Module):
    """ResNeXt-style: a group=4 conv with a residual and a 1x1 after it, then a group=4 conv widening 8 -> 12."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU())
        self.mix = nn.Conv2d(32, 32, 1)
        self.widen = nn.Conv2d(32, 48, 1, groups=4)
        self.head = nn.Conv2d(48, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(torch.relu(self.widen(torch.relu(self.mix(y + self.grouped(y)))))).mean((2, 3))


class SplitSlice(nn.Module):
    """Split a space in the middle, concat the branches, Slice across the concat, and a GLU-style chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.a = nn.Conv2d(12, 16, 3, padding=1)
        self.b = nn.Conv2d(20, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 8, 1)
        self.e = nn.Conv2d(32, 32, 1)
        self.f = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = torch.split(self.stem(x), [12, 20], dim=1)
        c = torch.relu(torch.cat([self.a(a), self.b(b)], dim=1))
        p, q = self.e(c).chunk(2, dim=1)
        return self.d(c[:, 8:24]), self.f(p * torch.sigmoid(q))


class SliceEdges(nn.Module):
    """A spatial Split (channels pass through), open and negative Slice bounds, a Slice over two axes,
    and a residual Add of a concat with a single conv (the conv's space is cut to match)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.a = nn.Conv2d(12, 8, 1)
        self.b = nn.Conv2d(20, 8, 1)
        self.p, self.q, self.r = nn.Conv2d(32, 16, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(32, 32, 1)
        self.z = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top, bottom = self.stem(x).split(8, dim=2)
        s = top + bottom
        joined = torch.relu(torch.cat([self.p(s), self.q(s)], dim=1) + self.r(s))
        return self.a(s[:, -12:]), self.b(s[:, :20, 2:]), self.z(joined)


MODELS = {"deconv": Deconv, "grouped-deconv": GroupedDeconv, "grouped": Grouped, "split-slice": SplitSlice,
          "slice-edges": SliceEdges}
OUTPUTS = {"split-slice": ["y0", "y1"], "slice-edges": ["y0", "y1", "y2"]}


@functools.cache
def _proto(name: str) -> bytes:
    torch.manual_seed(0)
    module = MODELS[name]().eval()
    with torch.no_grad():  # random BN statistics, so BN constants matter
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "m.onnx"
        outputs = OUTPUTS.get(name, ["y"])
        export_onnx(module, (torch.randn(1, 3, 16, 16),), path, ["x"], outputs)
        return onnx.load(str(path)).SerializeToString()


def _feeds(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _ir(name: str) -> ir.Model:
    model = ir.serde.deserialize_model(onnx.load_from_string(_proto(name)))
    common.ShapeInferencePass()(model)
    return model


def _nodes(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == op_type]


def _prune_zeroed(name: str, mode: str, allocation: str, multiple: int = 4):
    """(outputs with the plan's channels zeroed, outputs pruned by that plan, pruned model, channel graph)."""
    model = _ir(name)
    cg = analyze(model)
    plan = make_plan(model, cg, lambda _: 0.5, mode, "l2", multiple, allocation=allocation)
    zero_pruned(model, cg, plan)
    zeroed = outputs(model, _feeds(), check=True)
    apply_plan(model, cg, plan, choose_orders(cg, plan, reorder=True), ("slice", "gather"))
    return zeroed, outputs(model, _feeds(), check=True), model, cg


@pytest.mark.parametrize(("mode", "allocation"), PLANS)
@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_zeroed_channels_changes_nothing(name, mode, allocation):
    zeroed, pruned, model, cg = _prune_zeroed(name, mode, allocation)
    for err in compare_outputs(zeroed, pruned):
        assert err.max_rel <= ZERO_RTOL, (name, mode, allocation, err)
    weights = sum(n.inputs[1].const_value.size for n in _nodes(model, "Conv") + _nodes(model, "ConvTranspose"))
    original = sum(n.inputs[1].const_value.size for n in _nodes(_ir(name), "Conv") + _nodes(_ir(name), "ConvTranspose"))
    assert weights < 0.75 * original, (weights, original)  # ratio 0.5: most weights shrink on both axes
    frozen = set(cg.frozen_groups().values())
    assert all("(Conv" not in r and "(Split" not in r and "(Slice" not in r for r in frozen), frozen


def test_conv_transpose_loses_input_and_output_channels():
    _, _, model, cg = _prune_zeroed("deconv", "constrained", "budgeted")
    up, dw = _nodes(model, "ConvTranspose")
    # 16 -> 8 input channels (axis 0) and 24 -> 12 output channels (axis 1) at ratio 0.5.
    assert up.inputs[1].const_value.shape[:2] == (8, 12)
    assert dw.inputs[1].const_value.shape[:2] == (12, 1)
    assert dw.attributes["group"].value == 12
    assert [c.w_axis for c in cg.consumers if c.node == up.name] == [0]


def test_grouped_conv_keeps_its_groups():
    _, _, model, _ = _prune_zeroed("grouped", "constrained", "budgeted")
    grouped, widen = [n for n in _nodes(model, "Conv") if n.attributes.get("group") is not None
                      and n.attributes["group"].value > 1]
    assert grouped.attributes["group"].value == 4 and widen.attributes["group"].value == 4
    # 32 channels in 4 groups of 8 keep 4 per group (``mix`` prunes them); the widening conv keeps 6 of
    # 12 outputs per group (``head`` prunes them; the multiple 4 applies to all 4 groups together) and
    # reads all 8 inputs per group (no Conv/Gemm chose those).
    assert grouped.inputs[1].const_value.shape[:2] == (16, 4)
    assert widen.inputs[1].const_value.shape[:2] == (24, 8)


def test_split_and_slice_get_pruned_offsets():
    _, _, model, cg = _prune_zeroed("split-slice", "constrained", "budgeted")
    assert len(cg.sections) == 3  # the Split in the middle of a space, the chunk, the Slice
    split_sizes = [n.inputs[1].const_value.numpy().tolist() for n in _nodes(model, "Split")]
    # [12, 20] keep 6 and 10, rounded up to the multiple 4; the chunk's halves are joined (p * sigmoid(q)).
    assert sorted(split_sizes) == [[8, 8], [8, 12]]
    (sliced,) = _nodes(model, "Slice")
    starts, ends = (sliced.inputs[i].const_value.numpy() for i in (1, 2))
    # c[:, 8:24] cut a's 16 channels into [0, 8) and [8, 16); each keeps 4, so the Slice starts at 4.
    assert (int(starts[0]), int(ends[0])) == (4, 12)


def _pipeline(name: str, target: str = "cpu-x86", **options):
    ctx = BuildContext(get_target(target), _feeds(1))
    proto = onnx.load_from_string(_proto(name))
    return run_pipeline(proto, [create_pass("prune-channels", ctx, options)], ctx).records[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_ratio_zero_is_bit_exact(name):
    record = _pipeline(name, ratio=0.0)
    assert not record.modified
    assert record.max_rel_error == 0.0


@pytest.mark.parametrize("mode", ["constrained", "unconstrained"])
@pytest.mark.parametrize("name", list(MODELS))
def test_pipeline_prunes_with_fewer_flops(name, mode):
    # run_pipeline runs the ONNX checker and an ORT session on the result.
    record = _pipeline(name, ratio=0.5, mode=mode)
    assert record.modified
    assert record.after["flops"] < record.before["flops"]
    # Unconstrained producers compute the union of what their consumers read: maybe all, read in parts.
    fewer = record.stats["channels_after"] < record.stats["channels_before"]
    assert fewer or (mode == "unconstrained" and set(record.stats["selections"]) != {"none"}), record.stats


def test_grouped_conv_transpose_keeps_its_groups():
    _, _, model, _ = _prune_zeroed("grouped-deconv", "constrained", "budgeted")
    up1, up2 = _nodes(model, "ConvTranspose")
    assert up1.attributes["group"].value == up2.attributes["group"].value == 4
    # conv's 16 channels and up1's (tied to them) stay whole: only grouped ConvTransposes read them, and
    # those read whatever they are given. up2's 24 outputs in groups of 6 keep 3 per group (head prunes them).
    assert up1.inputs[1].const_value.shape[:2] == (16, 4)
    assert up2.inputs[1].const_value.shape[:2] == (16, 3)


@pytest.mark.parametrize("recovery", ["bias", "lstsq"])
def test_recovery_skips_conv_transpose_with_a_reason(recovery):
    # android-arm64 rounds to 8 channels, so the ConvTranspose's 16 inputs are pruned too.
    record = _pipeline("deconv", target="android-arm64", ratio=0.5, mode="unconstrained", recovery=recovery)
    reasons = {s["where"]: s["reason"] for s in record.skips}
    assert any(r == "recovery: ConvTranspose is not refit" for r in reasons.values()), reasons
    assert record.stats["recovered_layers"] == 1  # the Conv after it


@pytest.mark.parametrize("mode", ["constrained", "unconstrained"])
@pytest.mark.parametrize("name", list(MODELS))
def test_legacy_export_constants_are_read(name, mode):
    # The TorchScript exporter spells split sizes, slice bounds and reduce axes as Constant nodes.
    buffer = io.BytesIO()
    torch.manual_seed(0)
    torch.onnx.export(MODELS[name]().eval(), (torch.randn(1, 3, 16, 16),), buffer, dynamo=False, opset_version=18,
                      input_names=["x"])
    model = ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))
    common.ShapeInferencePass()(model)
    onnxscript.optimizer.fold_constants(model)  # as cleanup does: chunk's bounds are computed from Shape
    cg = analyze(model)
    assert all("not constant" not in r for r in cg.frozen_groups().values()), cg.frozen_groups()
    plan = make_plan(model, cg, lambda _: 0.5, mode, "l2", 4)
    zero_pruned(model, cg, plan)
    zeroed = outputs(model, _feeds(), check=True)
    apply_plan(model, cg, plan, choose_orders(cg, plan, reorder=True), ("slice", "gather"))
    for err in compare_outputs(zeroed, outputs(model, _feeds(), check=True)):
        assert err.max_rel <= ZERO_RTOL, err


def test_split_with_computed_sizes_is_frozen_with_a_reason():
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["": 18]>
        g (float[1, 3, 8, 8] x, int64[2] sizes) => (float[1, 4, 8, 8] y)
          <float[4, 3, 1, 1] w = {1,2,3,4,5,6,7,8,9,10,11,12}> {
            c = Conv(x, w)
            a, b = Split<axis = 1>(c, sizes)
            y = Concat<axis = 1>(b, a)
        }""")
    model = ir.serde.deserialize_model(proto)
    common.ShapeInferencePass()(model)
    reasons = set(analyze(model).frozen_groups().values())
    assert any(r.endswith("(Split): split sizes not constant") for r in reasons), reasons
