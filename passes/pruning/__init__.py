"""Channel pruning (UPSCALE-style): the ``prune-channels`` pass and what the compiler reads of it.

Public API: the pass and its config; ``width_phase`` (the search's per-phase keep ratios). The other
modules are the pass's parts: ``channel_graph`` (which channels must stay together), ``plan`` (what to
keep), ``budget`` (the global keep budget), ``channel_export`` (reorder instead of copy at export),
``recovery`` (refit the layers after a cut), ``heads`` (attention heads) and ``records`` (the analysis's
data types).
"""

from __future__ import annotations

from edgec.passes.pruning.plan import width_phase
from edgec.passes.pruning.prune_channels import PruneChannelsConfig, PruneChannelsPass

__all__ = ["PruneChannelsConfig", "PruneChannelsPass", "width_phase"]
