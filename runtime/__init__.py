"""edgec.runtime: bundle format, its loader, ORT sessions and latency profiling."""

from __future__ import annotations

from typing import Any


def load(path: Any) -> Any:
    """Open a bundle (dir or zip): verify schema and checksums, return a ready LoadedBundle."""
    from edgec.runtime.loader import load_bundle

    return load_bundle(path)
