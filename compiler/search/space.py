"""The search space: the pipeline passes' declared knobs, and candidates as plain, rebuildable data.

The knobs come only from each pass's ``search_space``; a candidate is a flat dict that ``SearchSpace.pipeline``
turns into an edgec.toml's passes and options. How the space is built and searched: docs/search.md.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from edgec.core.errors import ConfigError
from edgec.passes.base import KNOB_DECIMALS, EdgecPass, available_passes
from edgec.targets.profile import TargetProfile

Candidate = dict[str, Any]
PRECISION = "precision"
PRECISION_SLOT = "<precision>"  # where the quantization pass of a candidate runs


@dataclasses.dataclass(frozen=True)
class SearchKnob:
    """One searchable option of this space, from a pass's ``Knob``: ``pass_name`` None for precision.

    ``ordered`` knobs are landed, not sampled; ``idle_at`` and ``breakpoints`` are the declaration's.
    """

    pass_name: str | None
    option: str
    choices: tuple[Any, ...]
    default: Any
    ordered: bool = False
    continuous: bool = False
    # Continuous knobs: the values at which the built model changes (between two, every value builds
    # the same model); empty when unknown.
    breakpoints: tuple[float, ...] = ()
    idle_at: Any = None
    # One of ``choices`` per layer, as sorted (layer, value) pairs; () overrides none.
    per_layer: bool = False

    @property
    def key(self) -> str:
        """The candidate key: ``pass.option``, or ``precision``."""
        return self.option if self.pass_name is None else f"{self.pass_name}.{self.option}"

    @property
    def low(self) -> Any:
        """The smallest choice (ordered knobs)."""
        return min(self.choices)

    @property
    def high(self) -> Any:
        """The largest choice (ordered knobs)."""
        return max(self.choices)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Knobs over a pipeline: fixed passes run as given; searched passes run when a candidate enables them."""

    passes: tuple[str, ...]
    knobs: tuple[SearchKnob, ...]
    precision_passes: Mapping[str, str]
    # Per-layer knobs: explored after the uniform knobs (``compiler.search.layers``), never sampled.
    layer_knobs: tuple[SearchKnob, ...] = ()

    @property
    def all_knobs(self) -> tuple[SearchKnob, ...]:
        """Uniform and per-layer knobs."""
        return self.knobs + self.layer_knobs

    def knob(self, key: str) -> SearchKnob | None:
        """The knob with this candidate key, if the space has it."""
        return next((k for k in self.all_knobs if k.key == key), None)

    def default(self) -> Candidate:
        """The prior candidate: ordered knobs at their smallest value, fp32, every categorical at its prior."""
        return self.canonical({k.key: k.default for k in self.knobs})

    def _idle(self, name: str, candidate: Mapping[str, Any]) -> bool:
        """Whether pass ``name`` changes nothing for this candidate: it has idle knobs and all are idle."""
        idle = [k for k in self.all_knobs if k.pass_name == name and k.idle_at is not None]
        return bool(idle) and all(candidate.get(k.key, k.idle_at) == k.idle_at for k in idle)

    def active_passes(self, candidate: Mapping[str, Any]) -> list[str]:
        """The passes the candidate runs, in pipeline order."""
        precision = candidate.get(PRECISION, "fp32")
        out = []
        for name in self.passes:
            if name == PRECISION_SLOT:
                out += [] if precision == "fp32" else [self.precision_passes[precision]]
            elif not self._idle(name, candidate):
                out.append(name)
        return out

    def applicable(self, knob: SearchKnob, candidate: Mapping[str, Any]) -> bool:
        """Whether the knob changes anything for this candidate (its pass runs)."""
        if knob.pass_name is None:
            return True
        return knob.ordered or knob.pass_name in self.active_passes(candidate)

    def canonical(self, candidate: Mapping[str, Any]) -> Candidate:
        """Knobs of passes that do not run reset to their default, so equal builds have equal keys."""
        out = dict(candidate)
        for knob in self.knobs:
            if knob.continuous and knob.key in out:
                out[knob.key] = round(float(out[knob.key]), KNOB_DECIMALS)
        for knob in self.all_knobs:
            if (knob.key in out or not knob.per_layer) and not self.applicable(knob, out):
                out[knob.key] = knob.default
        return out

    def pipeline(self, candidate: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
        """The candidate as ``passes`` and ``[pass-options]`` of an edgec.toml."""
        passes = self.active_passes(candidate)
        options: dict[str, dict[str, Any]] = {}
        for knob in self.knobs:
            if knob.pass_name in passes:
                options.setdefault(knob.pass_name, {})[knob.option] = candidate[knob.key]
        for knob in self.layer_knobs:
            if knob.pass_name in passes and candidate.get(knob.key):
                options.setdefault(knob.pass_name, {})[knob.option] = dict(candidate[knob.key])
        return tuple(passes), options

    def sample(self, rng: random.Random) -> Candidate:
        """A uniform draw over every knob's declared choices (the random-search baseline)."""
        return self.canonical({k.key: rng.choice(k.choices) for k in self.knobs})


def candidate_key(candidate: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity for deduplication."""
    return tuple(sorted((k, repr(v)) for k, v in candidate.items()))


def precision_choices(proto: onnx.ModelProto, target: TargetProfile, quant_passes: Sequence[type[EdgecPass[Any]]]
                      ) -> dict[str, str]:
    """Precision name -> pass, for the quantization paths this model and target can take (first pass wins)."""
    choices: dict[str, str] = {}
    for cls in quant_passes:
        chosen = cls.precision_pass(proto, target)
        if chosen is not None and chosen.precision is not None:
            choices.setdefault(chosen.precision, chosen.name)
    return choices


def _pass_knobs(cls: type[EdgecPass[Any]], proto: onnx.ModelProto, target: TargetProfile) -> list[SearchKnob]:
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(cls.config_cls)
                                if f.default is not dataclasses.MISSING}
    knobs = []
    for option, declared in cls.refine_knobs(proto, target).items():
        choices = tuple(c for c in declared.choices if c not in declared.timing_dependent)
        if not choices:
            continue
        if declared.per_layer:
            knobs.append(SearchKnob(cls.name, option, choices, (), idle_at=(), per_layer=True))
            continue
        default = declared.prior if declared.prior is not None else defaults.get(option)
        if declared.ordered:
            default = min(choices)
        if default not in choices and not declared.continuous:
            default = choices[0]
        knobs.append(SearchKnob(cls.name, option, choices, default, declared.ordered, declared.continuous,
                                declared.breakpoints if declared.continuous else (), declared.idle_at))
    return knobs


def _nothing_to_search(passes: Sequence[str], registry: Mapping[str, type[EdgecPass[Any]]]) -> ConfigError:
    """Name the passes whose knobs a search lands (the ordered ones), for a pipeline with nothing to search."""
    landed = [name for name, cls in registry.items() if any(k.ordered for k in cls.search_space.values())]
    return ConfigError(f"--passes: none of {', '.join(passes)} has anything to search "
                       f"(add {', '.join(landed)} or a quantization pass)")


def build_space(passes: Sequence[str], proto: onnx.ModelProto, target: TargetProfile) -> SearchSpace:
    """The union of the pipeline passes' search spaces; quantization passes become the precision knob."""
    registry = available_passes()
    unknown = [p for p in passes if p not in registry]
    if unknown:
        raise ConfigError(f"--passes: unknown pass {unknown[0]!r}; valid passes: {', '.join(registry)}")
    precisions = precision_choices(proto, target, [registry[p] for p in passes if registry[p].precision])
    knobs: list[SearchKnob] = []
    if precisions:
        knobs.append(SearchKnob(None, PRECISION, ("fp32", *precisions), "fp32"))
    pipeline: list[str] = []
    for name in passes:
        if registry[name].precision:
            if PRECISION_SLOT not in pipeline:
                pipeline.append(PRECISION_SLOT)
            continue
        pipeline.append(name)
        knobs.extend(_pass_knobs(registry[name], proto, target))
    for name in dict.fromkeys(precisions.values()):
        knobs.extend(_pass_knobs(registry[name], proto, target))
    if not any(len(k.choices) > 1 or k.continuous for k in knobs if not k.per_layer):
        raise _nothing_to_search(passes, registry)
    return SearchSpace(tuple(pipeline), tuple(k for k in knobs if not k.per_layer), precisions,
                       tuple(k for k in knobs if k.per_layer))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    """A bare TOML key where it may be one, else quoted (node names hold slashes, dots and colons)."""
    return key if key and all(c.isalnum() or c in "_-" for c in key) else _toml_value(key)


def _toml_table(name: str, table: Mapping[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
    for key, sub in nested.items():
        lines += ["", *_toml_table(f"{name}.{_toml_key(key)}", sub)]
    return lines


def choice_toml(top: Mapping[str, Any], passes: Sequence[str], options: Mapping[str, Mapping[str, Any]],
                tables: Mapping[str, Mapping[str, Any]], header: str) -> str:
    """An edgec.toml: ``top`` keys, the pipeline, one ``[pass-options.NAME]`` per pass, other ``tables``."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items() if v is not None]
    lines.append(f"passes = {_toml_value(list(passes))}")
    for name, opts in options.items():
        if opts:
            lines += ["", *_toml_table(f'pass-options.{name}', opts)]
    for name, table in tables.items():
        if table:
            lines += ["", *_toml_table(name, table)]
    return "\n".join(lines) + "\n"


def model_reference(model: str) -> str:
    """The model as a rebuild should name it: files as absolute paths, zoo/factory names as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model
