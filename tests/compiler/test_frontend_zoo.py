"""zoo:NAME dispatch; runs once edgec.models.zoo exists."""

from __future__ import annotations

import pytest

from edgec.compiler.errors import EdgecError
from edgec.compiler.frontend import load_model


def test_unknown_zoo_model_names_it() -> None:
    pytest.importorskip("edgec.models.zoo")
    with pytest.raises(EdgecError) as info:
        load_model("zoo:no-such-model-in-the-zoo")
    assert "no-such-model-in-the-zoo" in str(info.value)
