"""Fusion rules and the table of fusion steps the fuse pass runs, with the contrib ops each emits."""
