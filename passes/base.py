"""The pass interface: onnx_ir's InPlacePass plus a frozen config, a registry name and a tolerance."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import onnx_ir as ir

from edgec.core.errors import ConfigError
from edgec.passes._library_logs import quiet_library_logs
from edgec.passes.context import BuildContext

if TYPE_CHECKING:
    import onnx

    from edgec.targets.profile import TargetProfile

ConfigT = TypeVar("ConfigT")
# The search rounds a continuous knob's value to this many decimals (equal builds get equal keys); a pass
# computing a knob's breakpoints rounds them the same way.
KNOB_DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class Knob:
    """A searchable option of a pass: its choices and what they mean to the search (see docs/search.md).

    Attributes:
        choices: the values to search; a uniform draw picks among them.
        ordered: latency and accuracy move monotonically with the value: the search lands the knob on the
            objective's boundary, starting from its smallest choice, instead of sampling it.
        continuous: any value between the smallest and the largest choice builds (an ordered knob).
        prior: the search's starting value where the config default is not the best known choice.
        idle_at: the value at which the pass changes nothing: a candidate whose every such knob of a pass
            is there leaves the pass out of its pipeline.
        timing_dependent: choices whose result depends on timing the build host: the search removes them
            (it does the timing itself, and a rebuild of its choice must not depend on it).
        breakpoints: continuous knobs: the values at which the built model changes (between two, every
            value builds the same model), set per model by ``refine_knobs``; empty when unknown.
        label: how a candidate's short description names a value other than ``idle_at`` (a format string);
            empty: not named.
        per_layer: the option takes one of ``choices`` per layer of the model, as (layer, value) pairs
            (``idle_at`` is ``()``, no override): the search explores it layer by layer after the uniform
            knobs (``EdgecPass.layer_levels`` names the layers and how each node's work scales with them).
    """

    choices: tuple[Any, ...]
    ordered: bool = False
    continuous: bool = False
    prior: Any = None
    idle_at: Any = None
    timing_dependent: tuple[Any, ...] = ()
    breakpoints: tuple[float, ...] = ()
    label: str = ""
    per_layer: bool = False


# One factor of a node's work: the share of its channels no layer changes, and (layer index, share) pairs.
WorkFactor = tuple[float, tuple[tuple[int, float], ...]]


@dataclasses.dataclass(frozen=True)
class LayerLevels:
    """A per-layer knob on one model: its layers, the value each takes, and how node work follows them.

    ``kept[i][k]`` is the share of layer i's channels a build keeps at ``levels[k]`` (rounding included).
    ``scaling`` maps node names to the factors of their work: a node's work at a choice of levels is the
    product over its factors of (fixed share + sum of share * kept), so a Conv reading layer a and writing
    layer b scales with kept(a) * kept(b). ``traffic`` likewise maps nodes to the factor of the values they
    write (bytes moved). Nodes absent from both are not changed by the knob.
    """

    layers: tuple[str, ...]
    widths: tuple[int, ...]
    levels: tuple[float, ...]
    kept: tuple[tuple[float, ...], ...]
    scaling: Mapping[str, tuple[WorkFactor, ...]]
    traffic: Mapping[str, WorkFactor]

    @staticmethod
    def share(factor: WorkFactor, kept: Callable[[int], float]) -> float:
        """A factor's kept share, ``kept(layer index)`` the share each layer keeps."""
        fixed, parts = factor
        return fixed + sum(share * kept(layer) for layer, share in parts)

    def work(self, node: str, kept: Callable[[int], float]) -> float:
        """The share of ``node``'s arithmetic left when each layer keeps ``kept(layer)`` of its channels."""
        out = 1.0
        for factor in self.scaling.get(node, ()):
            out *= self.share(factor, kept)
        return out

    def moved(self, node: str, kept: Callable[[int], float]) -> float:
        """The share of the bytes ``node`` writes that is left."""
        factor = self.traffic.get(node)
        return 1.0 if factor is None else self.share(factor, kept)


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
    search_space: ClassVar[Mapping[str, Knob]] = {}
    # Quantization passes: the precision they give a model ("int8"). The search offers the pipeline's
    # quantization passes as one ``precision`` knob (fp32 = none of them) instead of as passes.
    precision: ClassVar[str | None] = None
    tolerance: ClassVar[Tolerance] = Tolerance()
    # False for passes that only rewrite the main graph; the pipeline then records each
    # If/Loop/Scan subgraph as skipped so the user sees what was left unoptimized.
    handles_subgraphs: ClassVar[bool] = True

    def __init__(self, config: ConfigT, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.ctx = ctx

    @classmethod
    def refine_knobs(cls, proto: onnx.ModelProto, target: TargetProfile) -> Mapping[str, Knob]:
        """The ``search_space`` fitted to one model and target (choices it cannot take removed, breakpoints)."""
        return cls.search_space

    @classmethod
    def layer_levels(cls, proto: onnx.ModelProto, target: TargetProfile, feeds: Mapping[str, Any] | None,
                     option: str, levels: tuple[float, ...], options: Mapping[str, Any]) -> LayerLevels | None:
        """The layers of the ``per_layer`` knob ``option`` on ``proto``, each able to take every one of ``levels``.

        ``options`` are the pass's other options in the candidate refined; ``feeds`` fix symbolic shapes for
        the analysis. None where the model has no such layers, or those options leave the knob no effect.
        """
        return None

    @classmethod
    def precision_pass(cls, proto: onnx.ModelProto, target: TargetProfile) -> type[EdgecPass[Any]] | None:
        """The pass that gives ``proto`` this pass's ``precision`` on ``target``, or None where it cannot."""
        return cls if cls.precision is not None else None

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
        _REGISTRY[name] = cls
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
