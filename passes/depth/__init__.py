"""Depth pruning: the ``prune-depth`` pass (drop blocks; ReplaceMe's linear replacement) and its block finder.

Public API: the pass and its config; ``discover_blocks`` and ``candidates`` (the residual blocks the
pass may drop, for the search and ``edgec inspect``); ``load_metric`` (a task metric from a module path).
The other modules are the pass's parts: ``score`` (rank blocks on calibration data), ``edit`` (cut a
block out) and ``replaceme`` (fit the linear map that stands in for it).
"""

from __future__ import annotations

from edgec.passes.depth.blocks import Block, candidates, discover_blocks
from edgec.passes.depth.prune_depth import PruneDepthConfig, PruneDepthPass
from edgec.passes.depth.score import load_metric

__all__ = ["Block", "PruneDepthConfig", "PruneDepthPass", "candidates", "discover_blocks", "load_metric"]
