"""The ``local`` device: this host, run through the same runner script and shell as a remote board."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from edgec.runtime.devices._jobs import REMOTE_PREFIX, OnProgress, cleanup_command, run_command, timed_out
from edgec.runtime.devices.device import Device


class LocalTransport:
    """Copies a job into a temp dir on this host and runs ``python device_runner.py`` there."""

    def __init__(self, python: str | None = None, remote_base: str | None = None) -> None:
        self.device = Device("local")
        self.python = python or sys.executable
        self.remote_base = remote_base

    def make_dir(self) -> str:
        """A fresh ``edgec-*`` dir under ``remote_base`` (default: the system temp dir)."""
        return tempfile.mkdtemp(prefix=REMOTE_PREFIX, dir=self.remote_base)

    def push(self, files: Sequence[pathlib.Path], remote_dir: str) -> None:
        """Copy the staged files."""
        for file in files:
            shutil.copyfile(file, pathlib.Path(remote_dir) / file.name)

    def execute(self, command: str, timeout_s: float,
                on_progress: OnProgress | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``command`` with /bin/sh, as ssh would on a board."""
        try:
            return run_command(["sh", "-c", command], timeout_s, on_progress)
        except subprocess.TimeoutExpired as exc:
            raise timed_out(self.device, timeout_s, "running the device runner") from exc

    def remove(self, remote_dir: str) -> None:
        """Stop a stray runner and delete the job dir."""
        subprocess.run(["sh", "-c", cleanup_command(remote_dir)], capture_output=True, timeout=30, check=False)
