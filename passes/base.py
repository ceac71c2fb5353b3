"""The pass interface: onnx_ir's InPlacePass plus a frozen config, a registry name and a tolerance."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import onnx_ir as ir

from edgec.core.errors import ConfigError
from edgec.passes._library_logs import quiet_library_logs
from edgec.passes.context import BuildContext

ConfigT = TypeVar("ConfigT")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a pass's output may drift from its input on calibration data.

    Lossless passes set ``rtol`` (max |a-b| / max |a| per output). Lossy passes set ``lossy=True``:
    the pipeline reports cosine and max error, and fails only below ``min_cosine`` when one is set.
    """

    rtol: float = 1e-5
    lossy: bool = False
    min_cosine: float | None = None


class EdgecPass(ir.passes.InPlacePass, Generic[ConfigT]):
    """Base of every edgec pass. Subclasses set ``name``, ``config_cls`` and implement ``call``."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    search_space: ClassVar[Mapping[str, Sequence[Any]]] = {}
    tolerance: ClassVar[Tolerance] = Tolerance()
    # False for passes that only rewrite the main graph; the pipeline then records each
    # If/Loop/Scan subgraph as skipped so the user sees what was left unoptimized.
    handles_subgraphs: ClassVar[bool] = True

    def __init__(self, config: ConfigT, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.ctx = ctx

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> ir.passes.PassResult:
        """onnx_ir's pass call (requires, call, ensures), with the libraries' warnings kept off stderr."""
        with quiet_library_logs():
            return super().__call__(model_or_result)

    def record(self, **stats: Any) -> None:
        """Attach figures to this pass's record."""
        self.ctx.report.record(self.name, **stats)

    def skip(self, where: str, reason: str) -> None:
        """Say what this pass left alone and why."""
        self.ctx.report.skip(self.name, where, reason)


_REGISTRY: dict[str, type[EdgecPass[Any]]] = {}

P = TypeVar("P", bound=type)


def register_pass(name: str) -> Callable[[P], P]:
    """Class decorator: make a pass available to the CLI and build files under ``name``."""

    def wrap(cls: P) -> P:
        if name in _REGISTRY:
            raise RuntimeError(f"pass name {name!r} registered twice")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return wrap


def _load_builtin_passes() -> None:
    # Importing every family package (edgec.passes.pruning, ...) and its modules runs their
    # @register_pass decorators, so a new pass module in a family needs no edit here.
    import edgec.passes

    for module in pkgutil.walk_packages(edgec.passes.__path__, prefix="edgec.passes."):
        if not module.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(module.name)


def available_passes() -> dict[str, type[EdgecPass[Any]]]:
    """Every registered pass, by name."""
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def make_config(pass_cls: type[EdgecPass[Any]], options: Mapping[str, Any], source: str) -> Any:
    """Build a pass's frozen config from a TOML table; unknown keys name the source and the key."""
    fields = {f.name for f in dataclasses.fields(pass_cls.config_cls)}
    for key in options:
        if key not in fields:
            raise ConfigError(f"{source}: pass {pass_cls.name!r} has no option {key!r}")
    return pass_cls.config_cls(**options)


def create_pass(name: str, ctx: BuildContext, options: Mapping[str, Any] | None = None,
                source: str = "--passes") -> EdgecPass[Any]:
    """Instantiate the pass called ``name``; an unknown name lists the valid ones."""
    passes = available_passes()
    if name not in passes:
        raise ConfigError(f"{source}: unknown pass {name!r}; valid passes: {', '.join(passes)}")
    cls = passes[name]
    return cls(make_config(cls, options or {}, source), ctx)
