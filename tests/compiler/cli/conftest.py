"""Fixtures for CLI tests: a tiny real ONNX model and a runner that keeps stdout and stderr apart."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU, a residual add, pooling and a linear head: enough for cleanup and fuse to act."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = h + torch.relu(self.conv2(h))
        return self.head(h.mean(dim=(2, 3)))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyNet exported with the legacy exporter (fast), input 'x' [1,3,16,16]."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyNet().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"], do_constant_folding=False)
    return path


@pytest.fixture
def runner() -> CliRunner:
    """A click runner; result.stdout and result.stderr are separate."""
    return CliRunner()
