"""Keep the libraries a pass drives (onnxscript, onnx_ir, ORT's quantizer) off stderr unless edgec logs at INFO.

Their warnings are internal chatter of a pass ("Skipping constant folding for op SequenceEmpty", "Skipped
deduplication of initializer", onnx_ir's shape-inference failure with a whole traceback, ORT's quantizer on
the root logger, numpy's RuntimeWarnings inside ORT's calibrator); what a pass leaves undone reaches the user
through its report. On stderr they would come before, and break, the one line of an error that follows.
``edgec -v`` (INFO) shows them as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

LIBRARY_LOGGERS = ("onnxscript", "onnx_ir", "onnxruntime")
_lock = threading.Lock()
_depth = 0
_saved: list[int] = []
_warnings = contextlib.ExitStack()


def _not_from_onnxruntime(record: logging.LogRecord) -> bool:
    """Root-logger records below ERROR that onnxruntime's Python code logs (``logging.warning``) are dropped."""
    return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """While the block runs, library loggers log ERROR and above only and Python warnings are ignored.

    Nothing changes when INFO is on. Nested and repeated uses share one setting (a depth count).
    """
    global _depth
    root = logging.getLogger()
    if root.isEnabledFor(logging.INFO):
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    with _lock:
        if _depth == 0:
            _saved[:] = [logger.level for logger in loggers]
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            root.addFilter(_not_from_onnxruntime)
            _warnings.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for logger, level in zip(loggers, _saved, strict=True):
                    logger.setLevel(level)
                root.removeFilter(_not_from_onnxruntime)
                _warnings.close()
