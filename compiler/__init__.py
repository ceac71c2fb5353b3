"""edgec.compiler: frontends, the verified pass pipeline, and the command line."""
