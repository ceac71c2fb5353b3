"""PyTorch frontend: factories exported with dynamo (legacy as fallback) match torch in ORT."""

from __future__ import annotations

import logging

import frontend_factories
import numpy as np
import onnx
import pytest
import torch
from helpers import outputs

from edgec.compiler.frontend import load_model
from edgec.compiler.frontend.torch_export import is_factory_spec
from edgec.core.errors import ConfigError, ModelLoadError


def _example(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """The inputs the frontend exports with: float32 randn from a generator seeded with 0."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def _check_against_torch(proto_bytes: bytes, module: torch.nn.Module, feeds: dict[str, np.ndarray],
                         atol: float) -> None:
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    (got,) = outputs(proto_bytes, feeds).values()
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("spec, expected", [
    ("edgec.models.cnn:resnet18", True), ("frontend_factories:tiny_convnet", True),
    ("model.onnx", False), ("zoo:resnet18", True), ("a.b:c.d", False), ("C:/models/x.onnx", False),
])
def test_is_factory_spec(spec: str, expected: bool) -> None:
    assert is_factory_spec(spec) is expected


def test_factory_export_matches_torch() -> None:
    loaded = load_model("frontend_factories:tiny_convnet", {"x": (2, 3, 16, 16)})
    assert any("dynamo exporter" in note for note in loaded.notes)
    assert [i.name for i in loaded.proto.graph.input] == ["x"]
    dims = [d.dim_value for d in loaded.proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 16, 16]
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    _check_against_torch(loaded.proto.SerializeToString(), frontend_factories.tiny_convnet(), feeds, 1e-4)


def test_factory_inputs_named_in_order() -> None:
    loaded = load_model("frontend_factories:two_inputs", {"a": (2, 4), "b": (2, 3)})
    assert [i.name for i in loaded.proto.graph.input] == ["a", "b"]
    rng = np.random.default_rng(4)
    feeds = {"a": rng.standard_normal((2, 4)).astype(np.float32),
             "b": rng.standard_normal((2, 3)).astype(np.float32)}
    _check_against_torch(loaded.proto.SerializeToString(), frontend_factories.two_inputs(), feeds, 1e-4)


def test_token_inputs_exported_as_int64() -> None:
    loaded = load_model("frontend_factories:token_pooler", {"input_ids": (2, 7), "attention_mask": (2, 7)})
    elem_types = [i.type.tensor_type.elem_type for i in loaded.proto.graph.input]
    assert elem_types == [onnx.TensorProto.INT64] * 2
    rng = np.random.default_rng(5)
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    feeds = {"input_ids": rng.integers(0, 1000, (2, 7)), "attention_mask": mask}
    _check_against_torch(loaded.proto.SerializeToString(), frontend_factories.token_pooler(), feeds, 1e-5)


def test_dynamo_failure_falls_back_to_legacy(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgec.compiler.frontend.torch_export"):
        loaded = load_model("frontend_factories:data_dependent", {"x": (2, 3)})
    fallback = [n for n in loaded.notes if n.startswith("dynamo export failed (")]
    assert len(fallback) == 1 and fallback[0].endswith("); used the legacy exporter")
    assert any("dynamo export of frontend_factories:data_dependent failed" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert any("legacy exporter warned" in n and "Python boolean" in n for n in loaded.notes)
    # The tracer baked in the branch the example input took, so compare on that input.
    (x,) = _example((2, 3))
    _check_against_torch(loaded.proto.SerializeToString(), frontend_factories.data_dependent(),
                         {"x": x.numpy()}, 1e-4)


def test_factory_needs_input_shape() -> None:
    with pytest.raises(ConfigError, match="--input-shape is required") as info:
        load_model("frontend_factories:tiny_convnet")
    assert "frontend_factories:tiny_convnet" in str(info.value)


@pytest.mark.parametrize("spec, reason", [
    ("no_such_module_for_edgec:build", "cannot import the factory (ModuleNotFoundError"),
    ("frontend_factories:no_such_factory", "cannot import the factory (AttributeError"),
    ("frontend_factories:not_a_module", "returned dict, not a torch.nn.Module"),
    ("frontend_factories:broken_factory", "the factory raised RuntimeError: checkpoint weights.pt not found"),
])
def test_factory_errors_name_the_spec(spec: str, reason: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(spec, {"x": (1, 3)})
    assert str(info.value).startswith(f"{spec}: ")
    assert reason in str(info.value)
