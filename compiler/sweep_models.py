"""The models whose ops and shapes a device sweep copies: zoo names or .onnx paths, resolved here.

The runtime's sweep takes the models it is handed; naming zoo models is the compiler's job.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import onnx

from edgec.core.errors import ConfigError

DEFAULT_SWEEP_MODELS = ("mobilenetv2", "resnet18", "efficientnet-b0", "bert-like")


def load_sweep_models(names: Sequence[str] = DEFAULT_SWEEP_MODELS) -> list[tuple[str, onnx.ModelProto]]:
    """Zoo names (exported once, cached) or paths to .onnx files, as (name, model) pairs."""
    from edgec.models.zoo import get_zoo_model

    loaded = []
    for name in names:
        path = pathlib.Path(name)
        if name.endswith(".onnx"):
            if not path.is_file():
                raise ConfigError(f"--sweep-models: {name} does not exist")
            loaded.append((path.name, onnx.load(path)))
        else:
            loaded.append((name, onnx.load(get_zoo_model(name).onnx_path())))
    return loaded
