"""edgec.runtime: bundle format, its loader, ORT sessions and latency profiling."""

from __future__ import annotations

from edgec.runtime.loader import load_bundle as load

__all__ = ["load"]
