"""Which facts of a target profile a build reads: two targets that agree on them build the same model.

Passes read the target as data (``ctx.target.channel_multiple``, ``quantization_formats``, ...) and never
branch on its name, so a build that read only some facts builds the same bytes for any target with the
same values for those facts. ``RecordingTarget`` notes what a build reads; ``agrees`` compares two
targets on those facts. What is read is recorded as the build runs, so a pass that starts reading another
field is covered without an edit here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from edgec.targets.profile import TargetProfile

_FIELDS = frozenset(f.name for f in dataclasses.fields(TargetProfile))
# Derived facts: reading ``contrib_ops`` records that, not the whole ``execution_providers`` behind it.
_PROPERTIES = frozenset(name for name, value in vars(TargetProfile).items() if isinstance(value, property))
FACTS = _FIELDS | _PROPERTIES
# What names a target rather than describes it: messages and skip notes quote it, no pass branches on it.
LABELS = frozenset({"name", "description"})


class RecordingTarget(TargetProfile):
    """A target profile that adds the name of each fact read from it to ``reads``.

    Passes see the profile itself (every value is the plain profile's). Any other public attribute
    (a method such as ``to_json``) counts as reading every field.
    """

    def __init__(self, plain: TargetProfile, reads: set[str]) -> None:
        """Wrap ``plain``; ``reads`` collects the facts read (a set the caller keeps)."""
        # Not the dataclass __init__: the values stay on ``plain`` and every read goes through it.
        object.__setattr__(self, "_plain", plain)
        object.__setattr__(self, "_reads", reads)

    def __getattribute__(self, name: str) -> Any:
        """``plain``'s attribute, after noting which fact it is."""
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        reads: set[str] = object.__getattribute__(self, "_reads")
        if name in FACTS:
            reads.add(name)
        else:
            reads.update(_FIELDS)
        return getattr(object.__getattribute__(self, "_plain"), name)


def agrees(a: TargetProfile, b: TargetProfile, facts: Iterable[str]) -> bool:
    """Whether ``a`` and ``b`` have equal values for every one of ``facts`` (labels included if named)."""
    return all(getattr(a, name) == getattr(b, name) for name in facts)
