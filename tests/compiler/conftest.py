"""Shared fixtures for tests/compiler: tiny torch models exported to ONNX once per session."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

# frontend_factories sits next to this file; tests name its factories as 'frontend_factories:NAME'.
sys.path.insert(0, str(Path(__file__).parent))


def _export_convnet(path: Path, opset: int, **kwargs: object) -> Path:
    """TinyConvNet through the legacy exporter (fast, and it can still write old opsets)."""
    import frontend_factories
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frontend_factories.tiny_convnet(), (torch.randn(1, 3, 16, 16),), str(path),
                          dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"], **kwargs)
    return path


@pytest.fixture(scope="session")
def convnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyConvNet at opset 17, fixed shape 1x3x16x16."""
    return _export_convnet(tmp_path_factory.mktemp("convnet") / "convnet.onnx", 17)


@pytest.fixture(scope="session")
def convnet_opset11_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyConvNet at opset 11 (below what edgec keeps), fixed shape."""
    return _export_convnet(tmp_path_factory.mktemp("opset11") / "convnet11.onnx", 11)


@pytest.fixture(scope="session")
def convnet_dynamic_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyConvNet with a symbolic batch dim named 'batch' on input and output."""
    return _export_convnet(tmp_path_factory.mktemp("dynamic") / "convnet_dyn.onnx", 17,
                           dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
