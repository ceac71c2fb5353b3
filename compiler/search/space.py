"""The search space: the pipeline passes' declared knobs, and candidates as plain, rebuildable data.

A knob is (pass, option, choices), read from the ``search_space`` each pass declares next to its
config; the space is their union over the passes of the pipeline. Two kinds of knob matter to the
search (see ``strategy``):

* **ordered** knobs move latency and accuracy monotonically: the uniform channel ratio of
  ``prune-channels`` (searched as a continuous value between the smallest and largest declared
  choice, so the search can land on a latency target instead of on a grid point) and the number of
  blocks ``prune-depth`` drops (clipped to the blocks the model has, so no candidate asks for more).
* **categorical** knobs: everything else, plus ``precision``, which replaces the pipeline's
  quantization passes: ``fp32`` (none), ``int8`` (quantize-int8) or, for Conv-free MatMul graphs on
  targets that run it, ``int8-dynamic`` (quantize-dynamic: ORT's better int8 path for transformers).

A candidate is a flat dict ``{"precision": "int8", "prune-channels.ratio": 0.35, ...}``.
``SearchSpace.pipeline`` turns it into the pass list and ``[pass-options]`` tables of an edgec.toml,
and ``choice_toml`` writes that file: ``edgec build --config`` on it rebuilds the chosen model
exactly. Passes at their no-op value (ratio 0, no blocks) are left out of the pipeline. Choices whose
result depends on timing on the build host (quantize-int8's ``placement = "auto"``) are removed:
the search does the timing itself, and a rebuild must not depend on it.

Per-node precision enters as a count, not a map: ``quantize-int8.keep_float = k`` keeps the k nodes
most sensitive to int8 float (ranked on calibration data inside the pass), so a candidate stays
plain data that rebuilds without naming nodes. A channel ratio per layer and a full per-node
precision map (``mixed-precision``) would be knobs whose value is a table; the strategies treat
unknown knobs as categorical and never need to know what a value means.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from edgec.core.errors import ConfigError
from edgec.passes.base import EdgecPass, available_passes
from edgec.targets.profile import TargetProfile

Candidate = dict[str, Any]
PRECISION = "precision"
PRECISION_SLOT = "<precision>"  # where the quantization pass of a candidate runs
# The pipeline `edgec build --latency-ms/--max-drop` searches when no --passes are given. Pruning runs
# before fusion: fused attention (com.microsoft.Attention) hides a transformer's blocks from
# prune-depth and its heads and hidden projections from prune-channels.
SEARCH_PASSES = ("cleanup", "prune-depth", "prune-channels", "fuse", "quantize-int8")
QUANT_PASSES = {"quantize-int8": "int8", "quantize-dynamic": "int8-dynamic"}
CONTINUOUS = {("prune-channels", "ratio")}
ORDERED = {("prune-channels", "ratio"), ("prune-depth", "num_blocks")}
# Choices whose outcome depends on timing the build host: a rebuild would not be exact.
TIMING_DEPENDENT = {("quantize-int8", "placement"): "auto"}
# The search's starting values where the pass default is not the best known choice:
# bench/RESULTS.md (channel pruning: accuracy) finds lstsq recovery best at every FLOP level of the
# trained zoo and activation importance ahead of weight norms; constrained masks are within noise of
# unconstrained ones there and need no selection copies at inference.
PRIOR = {("prune-channels", "recovery"): "lstsq", ("prune-channels", "mode"): "constrained",
         ("prune-channels", "importance"): "activation"}
RATIO_DECIMALS = 3
# Passes that change nothing while all these knobs are zero: a candidate leaves them out of its pipeline.
IDLE_WHEN = {"prune-channels": ("ratio",), "prune-depth": ("num_blocks",)}


@dataclasses.dataclass(frozen=True)
class Knob:
    """One searchable option: ``pass_name`` None for precision; ``ordered`` knobs are landed, not sampled."""

    pass_name: str | None
    option: str
    choices: tuple[Any, ...]
    default: Any
    ordered: bool = False
    continuous: bool = False
    # Continuous knobs: the values at which the built model changes (between two, every value builds
    # the same model); empty when unknown.
    breakpoints: tuple[float, ...] = ()

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
    knobs: tuple[Knob, ...]
    precision_passes: Mapping[str, str]

    def knob(self, key: str) -> Knob | None:
        """The knob with this candidate key, if the space has it."""
        return next((k for k in self.knobs if k.key == key), None)

    def default(self) -> Candidate:
        """The prior candidate: no pruning, fp32, every categorical at its prior."""
        return self.canonical({k.key: k.default for k in self.knobs})

    def active_passes(self, candidate: Mapping[str, Any]) -> list[str]:
        """The passes the candidate runs, in pipeline order."""
        precision = candidate.get(PRECISION, "fp32")
        out = []
        for name in self.passes:
            if name == PRECISION_SLOT:
                out += [] if precision == "fp32" else [self.precision_passes[precision]]
            elif not (name in IDLE_WHEN and not any(candidate.get(f"{name}.{o}") for o in IDLE_WHEN[name])):
                out.append(name)
        return out

    def applicable(self, knob: Knob, candidate: Mapping[str, Any]) -> bool:
        """Whether the knob changes anything for this candidate (its pass runs)."""
        if knob.pass_name is None:
            return True
        return knob.ordered or knob.pass_name in self.active_passes(candidate)

    def canonical(self, candidate: Mapping[str, Any]) -> Candidate:
        """Knobs of passes that do not run reset to their default, so equal builds have equal keys."""
        out = dict(candidate)
        if "prune-channels.ratio" in out:
            out["prune-channels.ratio"] = round(float(out["prune-channels.ratio"]), RATIO_DECIMALS)
        for knob in self.knobs:
            if not self.applicable(knob, out):
                out[knob.key] = knob.default
        return out

    def pipeline(self, candidate: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
        """The candidate as ``passes`` and ``[pass-options]`` of an edgec.toml."""
        passes = self.active_passes(candidate)
        options: dict[str, dict[str, Any]] = {}
        for knob in self.knobs:
            if knob.pass_name in passes:
                options.setdefault(knob.pass_name, {})[knob.option] = candidate[knob.key]
        return tuple(passes), options

    def sample(self, rng: random.Random) -> Candidate:
        """A uniform draw over every knob's declared choices (the random-search baseline)."""
        return self.canonical({k.key: rng.choice(k.choices) for k in self.knobs})


def candidate_key(candidate: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity for deduplication."""
    return tuple(sorted((k, repr(v)) for k, v in candidate.items()))


def removable_blocks(proto: onnx.ModelProto, granularity: str) -> int:
    """How many blocks prune-depth could drop from ``proto`` at ``granularity``."""
    from edgec.passes.depth import candidates

    return sum(b.removable for b in candidates(ir.serde.deserialize_model(proto).graph, granularity))


def ratio_breakpoints(proto: onnx.ModelProto, multiple: int, low: float, high: float,
                      rounding: str = "up") -> tuple[float, ...]:
    """Uniform ratios in (low, high] at which some Conv/MatMul layer keeps fewer channels in or out.

    Rounded up, prune-channels keeps ceil(n (1 - r)) of n channels rounded up to the target's
    channel multiple m, so a layer of width n changes only at r = 1 - k m / n; dithered, at
    r = 1 - (k - phase(n)) m / n (``_prune_plan.round_keep``). Between two such values every ratio
    builds the same model. Rounded up to the candidates' 3 decimals so each one is past its step.
    (Channel groups joined by a Concat or a residual can step elsewhere; the search's model-hash
    check catches the duplicates that follow.)
    """
    from edgec.passes.pruning import width_phase

    weights = {i.name: list(i.dims) for i in proto.graph.initializer}
    widths: set[int] = set()
    for node in proto.graph.node:
        dims = weights.get(node.input[1], []) if node.op_type in ("Conv", "MatMul") and len(node.input) > 1 else []
        if len(dims) >= 2:  # output and input widths: producers and consumers both round their counts
            widths |= {dims[0], dims[1]} if node.op_type == "Conv" else {dims[-1], dims[-2]}
    scale = 10**RATIO_DECIMALS
    phase = {n: width_phase(n) if rounding == "dithered" else 0.0 for n in widths}
    points = {math.ceil((1.0 - (k - phase[n]) * multiple / n) * scale - 1e-6) / scale
              for n in widths for k in range(1, n // multiple + 1)}
    return tuple(sorted(p for p in points if low < p <= high))


def precision_choices(proto: onnx.ModelProto, target: TargetProfile, quant_passes: Sequence[str]
                      ) -> dict[str, str]:
    """Precision name -> pass, for the quantization paths this model and target can take."""
    ops = {n.op_type for n in proto.graph.node}
    transformer = not ops & {"Conv", "ConvTranspose"} and bool(ops & {"MatMul", "Attention"})
    formats = set(target.quantization_formats)
    choices: dict[str, str] = {}
    for name in quant_passes:
        precision = QUANT_PASSES[name]
        if precision == "int8" and transformer and "int8-dynamic" in formats:
            precision, name = "int8-dynamic", "quantize-dynamic"  # quantize-int8 would pick dynamic anyway
        if precision == "int8-dynamic" and (not transformer or "int8-dynamic" not in formats):
            continue  # dynamic int8 Conv is slower than fp32 (see quantize_dynamic.REFUSED_OPS)
        if precision == "int8" and "int8-qdq" not in formats:
            continue
        choices.setdefault(precision, name)
    return choices


def _pass_knobs(cls: type[EdgecPass[Any]], proto: onnx.ModelProto, target: TargetProfile) -> list[Knob]:
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(cls.config_cls)
                                if f.default is not dataclasses.MISSING}
    knobs = []
    for option, declared in cls.search_space.items():
        choices = tuple(c for c in declared if TIMING_DEPENDENT.get((cls.name, option)) != c)
        if (cls.name, option) == ("prune-depth", "num_blocks"):
            most = removable_blocks(proto, defaults.get("granularity", "layer"))
            choices = tuple(c for c in choices if c <= most)
        if not choices:
            continue
        default = PRIOR.get((cls.name, option), defaults.get(option))
        if (cls.name, option) in ORDERED:
            default = min(choices)
        if default not in choices and (cls.name, option) not in CONTINUOUS:
            default = choices[0]
        continuous = (cls.name, option) in CONTINUOUS
        rounding = cls.search_space.get("rounding", ("up",))[0]  # the one the search builds with
        steps = ratio_breakpoints(proto, max(target.channel_multiple, 1), min(choices), max(choices), rounding) \
            if continuous else ()
        knobs.append(Knob(cls.name, option, choices, default, (cls.name, option) in ORDERED, continuous, steps))
    return knobs


def build_space(passes: Sequence[str], proto: onnx.ModelProto, target: TargetProfile) -> SearchSpace:
    """The union of the pipeline passes' search spaces; quantization passes become the precision knob."""
    registry = available_passes()
    unknown = [p for p in passes if p not in registry]
    if unknown:
        raise ConfigError(f"--passes: unknown pass {unknown[0]!r}; valid passes: {', '.join(registry)}")
    quant = [p for p in passes if p in QUANT_PASSES]
    precisions = precision_choices(proto, target, quant)
    knobs: list[Knob] = []
    if precisions:
        knobs.append(Knob(None, PRECISION, ("fp32", *precisions), "fp32"))
    pipeline: list[str] = []
    for name in passes:
        if name in QUANT_PASSES:
            if PRECISION_SLOT not in pipeline:
                pipeline.append(PRECISION_SLOT)
            continue
        pipeline.append(name)
        knobs.extend(_pass_knobs(registry[name], proto, target))
    for name in set(precisions.values()):
        knobs.extend(_pass_knobs(registry[name], proto, target))
    if not any(len(k.choices) > 1 or k.continuous for k in knobs):
        raise ConfigError(f"--passes: none of {', '.join(passes)} has anything to search "
                          f"(add prune-channels, prune-depth or a quantization pass)")
    return SearchSpace(tuple(pipeline), tuple(knobs), precisions)


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


def _toml_table(name: str, table: Mapping[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
    for key, sub in nested.items():
        lines += ["", *_toml_table(f"{name}.{key}", sub)]
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
