"""edgec.compiler.search: latency measurement, candidate execution and the hardware-aware search."""
