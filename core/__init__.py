"""edgec.core: what every layer shares and that depends on no other part of edgec.

Errors (``errors``), IR conversions and the feeds type (``ir``), model statistics and shape inference
(``stats``), how well two models' outputs agree (``agreement``), and progress of long work (``progress``).
The layers above it, low to high: targets, runtime, passes and models, compiler.
"""
