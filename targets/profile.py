"""TargetProfile: what one device runs, read from a TOML file; no pass branches on a target name."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgec.core.errors import TargetError

OPT_LEVELS = ("disabled", "basic", "extended", "all")


@dataclasses.dataclass(frozen=True)
class ExecutionProviderSpec:
    """One execution provider of a target and where its op coverage comes from.

    ``ops_source`` is one of:
      - ``ort-kernel-registry``: the kernels compiled into the installed onnxruntime (CPU EP);
      - ``nnapi-table`` / ``coreml-mlprogram-table`` / ``coreml-neuralnetwork-table``: ORT Mobile's
        usability tables shipped in ``onnxruntime.tools.mobile_helpers``;
      - ``onnx-standard``: every op of the default ONNX domain, minus ``exclude_ops``.
    """

    name: str
    ops_source: str
    exclude_ops: tuple[str, ...] = ()
    contrib_ops: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ("float32",)


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """A device profile. Every field is data a pass or the bundle writer reads."""

    name: str
    description: str
    runtime: str
    execution_providers: tuple[ExecutionProviderSpec, ...]
    graph_optimization_level: str
    intra_op_num_threads: int
    model_format: str
    ort_optimization_style: str
    ort_target_platform: str
    quantization_formats: tuple[str, ...]
    activation_dtype: str
    channel_multiple: int
    channel_selection: tuple[str, ...]
    host_measurable: bool
    loader_sample: str

    @property
    def ep_names(self) -> list[str]:
        """Provider names in priority order, as ORT takes them."""
        return [ep.name for ep in self.execution_providers]

    @property
    def contrib_ops(self) -> frozenset[str]:
        """com.microsoft ops that some EP of this target has kernels for."""
        return frozenset(op for ep in self.execution_providers for op in ep.contrib_ops)

    @property
    def is_mobile(self) -> bool:
        """Whether bundles carry an ORT-format model for ORT Mobile."""
        return self.model_format == "ort"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, for manifests and ``edgec targets --json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TargetProfile:
        """Build a profile from parsed TOML; unknown or missing keys name the file and the key."""
        data = dict(data)
        eps = data.pop("execution_providers", None)
        if not eps:
            raise TargetError(f"{source}: no [[execution_providers]] table")
        ep_fields = {f.name for f in dataclasses.fields(ExecutionProviderSpec)}
        specs = []
        for ep in eps:
            unknown = set(ep) - ep_fields
            if unknown:
                raise TargetError(f"{source}: unknown execution provider key {sorted(unknown)[0]!r}")
            specs.append(ExecutionProviderSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in ep.items()}))
        fields = {f.name for f in dataclasses.fields(cls)} - {"execution_providers"}
        unknown = set(data) - fields
        if unknown:
            raise TargetError(f"{source}: unknown key {sorted(unknown)[0]!r}")
        missing = fields - set(data)
        if missing:
            raise TargetError(f"{source}: missing key {sorted(missing)[0]!r}")
        if data["graph_optimization_level"] not in OPT_LEVELS:
            raise TargetError(f"{source}: graph_optimization_level must be one of {', '.join(OPT_LEVELS)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(execution_providers=tuple(specs), **values)
