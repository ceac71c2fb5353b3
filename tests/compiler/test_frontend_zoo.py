"""zoo:NAME dispatch to the model zoo."""

from __future__ import annotations

import pytest

from edgec.compiler.frontend import load_model
from edgec.core.errors import EdgecError


def test_unknown_zoo_model_names_it() -> None:
    with pytest.raises(EdgecError) as info:
        load_model("zoo:no-such-model-in-the-zoo")
    assert "no-such-model-in-the-zoo" in str(info.value)


def test_zoo_model_loads_with_its_input_shapes() -> None:
    loaded = load_model("zoo:digits-cnn")
    (graph_input,) = loaded.proto.graph.input
    assert graph_input.name == "input"
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 1, 8, 8]
