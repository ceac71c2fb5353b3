"""edgec.passes: graph passes, one per module, registered by kebab-case name."""
