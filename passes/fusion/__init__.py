"""Graph cleanup and fusion: the ``cleanup`` and ``fuse`` passes, and the fusion rules in ``rules/``.

Public API: the two passes and their configs. Fusions are onnxscript rewrite rules; ``rules.catalog``
lists the steps ``fuse`` runs and the contrib ops each emits.
"""

from __future__ import annotations

from edgec.passes.fusion.cleanup import CleanupConfig, CleanupGraphPass
from edgec.passes.fusion.fuse import FuseConfig, FuseGraphPass

__all__ = ["CleanupConfig", "CleanupGraphPass", "FuseConfig", "FuseGraphPass"]
