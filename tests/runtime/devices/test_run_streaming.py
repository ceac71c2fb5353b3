"""run_command with on_progress: progress lines reach the host as written; the rest is kept as run keeps it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgec.runtime.devices._jobs import run_command
from edgec.runtime.devices.device_runner import PROGRESS_MARK

SCRIPT = f"""
import sys, time
print("result line")
for done in (1, 2, 3):
    sys.stderr.write("{PROGRESS_MARK} %d 3\\n" % done); sys.stderr.flush()
    time.sleep(0.2)
sys.stderr.write("a warning\\n")
sys.exit(4)
"""


def test_progress_lines_arrive_while_the_process_runs_and_are_left_out_of_stderr():
    seen: list[tuple[int, int, float]] = []
    start = time.monotonic()
    proc = run_command([sys.executable, "-c", SCRIPT], 60, lambda done, total: seen.append(
        (done, total, time.monotonic() - start)))
    ended = time.monotonic() - start
    assert [(d, t) for d, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert ended - seen[0][2] > 0.3  # heard while it slept on (0.4 s), not parsed once it ended
    assert proc.returncode == 4 and proc.stdout == "result line\n" and proc.stderr == "a warning\n"


def test_a_process_past_its_time_is_killed_and_raises_as_run_does():
    with pytest.raises(subprocess.TimeoutExpired):
        run_command([sys.executable, "-c", "import time; time.sleep(30)"], 0.5, lambda done, total: None)
