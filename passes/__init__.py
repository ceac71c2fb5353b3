"""edgec.passes: graph passes, registered by kebab-case name, in one subpackage per family.

``base`` (the pass interface, registry and knobs) and ``context`` (``BuildContext``, the pass report)
are shared; ``pruning``, ``depth``, ``quant`` and ``fusion`` are the families, each stating its public
API in its ``__init__``. Families never import each other.
"""
