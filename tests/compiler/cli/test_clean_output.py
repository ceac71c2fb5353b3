"""Library chatter (ORT's quantizer, onnxscript, onnx_ir, ORT's C++ log) stays off stderr unless `edgec -v`.

A pass's library messages go to its record (``library_messages``) instead. The build quantizes with the
percentile calibrator, which prints to stdout, after prune-channels, whose 1-D pruned weights make ORT's
quantizer log a root-logger WARNING (the two kinds of noise a plain build used to show).
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edgec.compiler.pipeline import library_messages
from edgec.runtime.session import session_options

# A build here takes ~10 s; should one ever hang (CI saw one pass 300 s once), faulthandler dumps every thread's
# stack to stderr and exits, so the failure below shows where it stood instead of a bare TimeoutExpired.
EDGEC = [sys.executable, "-c", "import faulthandler; faulthandler.dump_traceback_later(240, exit=True); "
         "from edgec.compiler.cli import main; main()"]
PASSES = "cleanup,fuse,prune-channels,quantize-int8"
# A library line on stderr: a log record of a logger other than edgec's, ORT's C++ log, or a calibrator's print.
LIBRARY_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (?!edgec)|onnxruntime:|CleanUnused|^Removed |"
                          r"^Collecting tensor data|^Number of |pass prune")
# The quantized model against the pruned one it came from: int8 rounding only.
MIN_QUANT_COSINE = 0.99


def _build(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    config = tmp_path / "edgec.toml"
    config.write_text('[pass-options.quantize-int8]\ncalibration = "percentile"\n')
    args = [*flags, "build", "zoo:mnist-resnet", "--config", str(config), "--target", "android-arm64",
            "--passes", PASSES, "-o", str(tmp_path / "out"), "--json"]
    proc = subprocess.run([*EDGEC, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout)  # stdout is the JSON report alone, in both modes


def _quant_record(report: dict) -> dict:
    assert [r["name"] for r in report["passes"]] == PASSES.split(",")
    return report["passes"][-1]


def test_build_stderr_has_no_library_lines_and_records_keep_them(tmp_path: Path) -> None:
    proc, report = _build(tmp_path)
    noise = [line for line in proc.stderr.splitlines() if LIBRARY_LINE.search(line)]
    assert noise == [], proc.stderr
    for word in ("WARNING", "CleanUnused", "Removed", "pass prune"):
        assert word not in proc.stderr
    record = _quant_record(report)
    kept = record["library_messages"]
    assert any(m.startswith("WARNING root: Axis 1 is out-of-range for weight") for m in kept), kept
    assert "stdout: Collecting tensor data and making histogram ..." in kept, kept
    assert record["min_cosine"] >= MIN_QUANT_COSINE
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["passes"][-1]["library_messages"] == kept


def test_verbose_build_shows_library_messages(tmp_path: Path) -> None:
    proc, report = _build(tmp_path, "-v")
    assert "WARNING root: Axis 1 is out-of-range for weight" in proc.stderr
    assert "Collecting tensor data and making histogram ..." in proc.stderr
    assert "INFO edgec.compiler.pipeline: pass prune-channels" in proc.stderr
    assert "CleanUnusedInitializersAndNodeArgs" in proc.stderr  # ORT's own log, at warning level with -v
    record = _quant_record(report)
    assert "stdout: Collecting tensor data and making histogram ..." in record["library_messages"]
    assert record["min_cosine"] >= MIN_QUANT_COSINE


@pytest.fixture
def root_stream():
    """A handler on the root logger, as `edgec` configures it, writing to a string; the root level restored."""
    root, stream = logging.getLogger(), io.StringIO()
    handler, level = logging.StreamHandler(stream), root.level
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # Other tests in the same worker may have turned these loggers down; here they follow the root's level.
    speakers = [logging.getLogger(name) for name in ("onnx_ir", "onnx_ir.passes", "onnxscript",
                                                      "onnxscript.optimizer", "edgec", "edgec.compiler")]
    levels = [logger.level for logger in speakers]
    for logger in speakers:
        logger.setLevel(logging.NOTSET)
    yield root, stream
    for logger, old in zip(speakers, levels, strict=True):
        logger.setLevel(old)
    root.removeHandler(handler)
    root.setLevel(level)


def _speak(tag: str) -> None:
    warnings.warn(f"library warns {tag}", UserWarning, stacklevel=1)
    logging.warning("root record %s", tag)  # as ORT's quantizer does
    logging.getLogger("onnxscript.optimizer").warning("folding skipped %s", tag)
    logging.getLogger("onnx_ir.passes").info("removed nodes %s", tag)
    logging.getLogger("edgec.compiler.test").warning("edgec speaks %s", tag)
    print(f"Collecting tensor data {tag}")  # noqa: T201 - a library's print


def test_library_messages_are_kept_off_stderr_and_stdout(root_stream, capsys: pytest.CaptureFixture[str]) -> None:
    root, stream = root_stream
    root.setLevel(logging.WARNING)
    with library_messages() as kept:
        _speak("quiet")
    assert stream.getvalue() == "WARNING edgec.compiler.test: edgec speaks quiet\n"
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")
    assert re.fullmatch(r"UserWarning: library warns quiet \(test_clean_output\.py:\d+\)", kept[0]), kept
    assert kept[1:] == ["WARNING root: root record quiet", "WARNING onnxscript.optimizer: folding skipped quiet",
                        "stdout: Collecting tensor data quiet"]


def test_library_messages_pass_through_when_verbose(root_stream, capsys: pytest.CaptureFixture[str]) -> None:
    root, stream = root_stream
    root.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as shown, library_messages() as kept:
        warnings.simplefilter("always")
        _speak("loud")
    assert stream.getvalue().splitlines() == ["WARNING root: root record loud",
                                              "WARNING onnxscript.optimizer: folding skipped loud",
                                              "INFO onnx_ir.passes: removed nodes loud",
                                              "WARNING edgec.compiler.test: edgec speaks loud"]
    assert capsys.readouterr().out == "Collecting tensor data loud\n"
    assert [str(w.message) for w in shown] == ["library warns loud"]
    assert len(kept) == 4  # kept all the same (INFO records are not)


def test_many_messages_are_capped(root_stream) -> None:
    root, _ = root_stream
    root.setLevel(logging.WARNING)
    with library_messages() as kept:
        for i in range(150):
            logging.getLogger("onnxruntime.quantization").warning("node %d", i)
            logging.getLogger("onnxruntime.quantization").warning("node %d", i)  # repeats kept once
    assert len(kept) == 101
    assert kept[-1] == "(50 more library messages left out)"


def test_ort_log_severity_follows_verbosity(root_stream) -> None:
    root, _ = root_stream
    root.setLevel(logging.WARNING)
    assert session_options().log_severity_level == 4  # errors arrive as exceptions; fatal only
    root.setLevel(logging.INFO)
    assert session_options().log_severity_level == 2
    root.setLevel(logging.WARNING)
    session_options()  # puts the default logger (ORT's own tools' sessions) back to errors only
