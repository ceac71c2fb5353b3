"""BuildContext: what every pass of one build sees (target, calibration feeds, seed, report)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edgec.core.ir import Feeds
from edgec.targets.profile import TargetProfile


@dataclasses.dataclass
class SkipNote:
    """A part of the model a pass left alone, and why."""

    pass_name: str
    where: str
    reason: str


@dataclasses.dataclass
class PassReport:
    """Stats and skips that passes leave for the pipeline record. Passes never print."""

    stats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    skips: list[SkipNote] = dataclasses.field(default_factory=list)

    def record(self, pass_name: str, **stats: Any) -> None:
        """Attach figures (counts, ratios) to a pass's record."""
        self.stats.setdefault(pass_name, {}).update(stats)

    def skip(self, pass_name: str, where: str, reason: str) -> None:
        """Note a node or subgraph the pass did not touch, with the reason."""
        self.skips.append(SkipNote(pass_name, where, reason))


@dataclasses.dataclass
class BuildContext:
    """Explicit state for one build; nothing in edgec is global."""

    target: TargetProfile
    calibration: list[Feeds] = dataclasses.field(default_factory=list)
    seed: int = 0
    report: PassReport = dataclasses.field(default_factory=PassReport)
    # The model's task metric when one is known (zoo models): serialized model -> {"accuracy": ...},
    # higher is better, first key primary. Passes that trade accuracy (quantization recovery,
    # depth pruning) use it instead of the output-cosine proxy.
    evaluate: Callable[[bytes], dict[str, float] | None] | None = None
    # Where the feeds came from ("random", a file, "zoo"): named when ORT rejects one of them.
    calibration_source: str = "calibration"
