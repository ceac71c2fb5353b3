"""Progress bars on stderr: drawn on a terminal (the real CLI in a pseudo-terminal), never with --json or
--quiet, and never when stderr is a pipe or click's runner."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from edgec.compiler.cli import cli

EDGEC = [sys.executable, "-c", "from edgec.compiler.cli import main; main()"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# rich's bar and spinner glyphs: none may reach stderr unless bars are drawn.
DRAWING = re.compile("[\u2500-\u257f\u2800-\u28ff]")
RUNS = 50_000  # digits-cnn runs in tens of microseconds: enough runs for the bar to be drawn a few times
RANKING_CONFIG = ('target = "cpu-x86"\npasses = ["cleanup", "quantize-int8"]\n'
                  '[pass-options.quantize-int8]\nplacement = "all"\nkeep_float = 1\n')


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "120"}


def _on_terminal(args: list[str], cwd: Path, timeout_s: float = 180) -> tuple[int, str, str]:
    """Run edgec with stderr on a pseudo-terminal (stdout to a file): exit code, stdout, what the terminal got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    out = cwd / "stdout.txt"
    with out.open("wb") as stdout:
        proc = subprocess.Popen([*EDGEC, *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal and everything it wrote has been read
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out.read_text(), b"".join(chunks).decode("utf-8", "replace")


def _assert_nothing_drawn(stderr: str) -> None:
    assert not ANSI.search(stderr), stderr[:500]
    assert not DRAWING.search(stderr), stderr[:500]
    assert not re.search(r"\d+/\d+", stderr), stderr[:500]


def test_profile_on_a_terminal_draws_a_bar_with_its_count(tmp_path):
    code, stdout, terminal = _on_terminal(["profile", "zoo:digits-cnn", "--runs", str(RUNS), "--warmup", "5"],
                                          tmp_path)
    assert code == 0, terminal[-2000:]
    assert f"{RUNS} runs after 5 warm-up" in stdout
    assert ANSI.search(terminal) and DRAWING.search(terminal)
    text = ANSI.sub("", terminal)
    assert "timed runs" in text and "ETA" in text
    counts = [int(done) for done in re.findall(rf"(\d+)/{RUNS}\b", text)]
    assert counts and all(0 <= done <= RUNS for done in counts), text[-2000:]
    assert counts == sorted(counts)  # the count only moves forward
    # Transient: the last thing on the terminal is the cleared bar, not a stale count.
    assert "timed runs" not in ANSI.sub("", terminal.rsplit("\x1b[2K", 1)[-1])


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_build_on_a_terminal_draws_nothing_with_quiet_or_json(tmp_path, flag):
    (tmp_path / "edgec.toml").write_text(RANKING_CONFIG)
    code, stdout, terminal = _on_terminal(["build", "zoo:digits-cnn", "--config", "edgec.toml", "-o", "b", flag],
                                          tmp_path)
    assert code == 0, terminal[-2000:]
    assert (tmp_path / "b" / "manifest.json").is_file()
    _assert_nothing_drawn(terminal)
    if flag == "--json":
        assert stdout.lstrip().startswith("{")


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_profile_on_a_terminal_draws_nothing_with_quiet_or_json(tmp_path, flag):
    code, stdout, terminal = _on_terminal(["profile", "zoo:digits-cnn", "--runs", "2000", flag], tmp_path)
    assert code == 0, terminal[-2000:]
    assert ('"runs": 2000' if flag == "--json" else "2000 runs") in stdout
    _assert_nothing_drawn(terminal)


def test_stderr_a_pipe_draws_nothing(tmp_path):
    proc = subprocess.run([*EDGEC, "profile", "zoo:digits-cnn", "--runs", "2000"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "2000 runs" in proc.stdout
    _assert_nothing_drawn(proc.stderr)


def test_click_runner_draws_nothing(tmp_path, runner):
    (tmp_path / "edgec.toml").write_text(RANKING_CONFIG)
    result = runner.invoke(cli, ["build", "zoo:digits-cnn", "--config", str(tmp_path / "edgec.toml"),
                                 "-o", str(tmp_path / "b")], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "bundle written" in result.stdout
    _assert_nothing_drawn(result.stderr)
