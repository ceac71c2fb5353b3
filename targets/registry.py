"""Find target profiles by name among the TOML files in targets/profiles/."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources

from edgec.core.errors import TargetError
from edgec.targets.profile import TargetProfile


@functools.cache
def all_targets() -> dict[str, TargetProfile]:
    """Every shipped profile, keyed by name, in name order."""
    profiles = {}
    folder = resources.files("edgec.targets") / "profiles"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".toml"):
            continue
        data = tomllib.loads(entry.read_text(encoding="utf-8"))
        profile = TargetProfile.from_dict(data, source=f"targets/profiles/{entry.name}")
        profiles[profile.name] = profile
    return profiles


def get_target(name: str) -> TargetProfile:
    """The profile called ``name``; an unknown name lists the valid ones."""
    targets = all_targets()
    if name not in targets:
        raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(targets)}")
    return targets[name]
