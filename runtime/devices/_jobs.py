"""Ship a job (models, inputs, device_runner.py) to a device, run it there, read its JSON, clean up."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import pathlib
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from edgec.runtime.devices.device import Device, DeviceError
from edgec.runtime.devices.device_runner import ERROR_MARK, RESULT_MARK

log = logging.getLogger(__name__)

RUNNER_FILE = pathlib.Path(__file__).with_name("device_runner.py")
JOB_FILE = "job.json"
INPUTS_FILE = "inputs.npz"
PID_FILE = "runner.pid"
REMOTE_PREFIX = "edgec-"
# Connection set-up and copying on top of the runner's own deadline.
TRANSPORT_MARGIN_S = 20.0
PYTHON_HINT = "install Python 3 with numpy and onnxruntime there, or name its python with --device-python"


class Transport(Protocol):
    """How files reach a device and how a command runs there."""

    device: Device
    python: str

    def make_dir(self) -> str:
        """Create a fresh temporary directory on the device and return its path."""

    def push(self, files: Sequence[pathlib.Path], remote_dir: str) -> None:
        """Copy ``files`` into ``remote_dir``."""

    def execute(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run a POSIX shell command on the device."""

    def remove(self, remote_dir: str) -> None:
        """Stop the runner if it still runs and delete ``remote_dir``; never raises."""


def _quote_word(word: str) -> str:
    """shlex.quote, but a leading ``~/`` stays unquoted so the device's shell expands it."""
    return "~/" + shlex.quote(word[2:]) if word.startswith("~/") else shlex.quote(word)


def runner_command(remote_dir: str, python: str) -> str:
    """``cd DIR``, record the shell's pid (exec keeps it for python) so cleanup can stop a stray runner."""
    py = " ".join(_quote_word(part) for part in shlex.split(python))
    d = shlex.quote(remote_dir)
    return f"cd {d} && echo $$ > {PID_FILE} && exec {py} device_runner.py {JOB_FILE}"


def cleanup_command(remote_dir: str) -> str:
    """Kill the runner (if alive) and remove the job directory; refuses paths edgec did not make."""
    if not pathlib.PurePosixPath(remote_dir).name.startswith(REMOTE_PREFIX):
        raise ValueError(f"refusing to remove {remote_dir!r}: not an edgec job directory")
    d = shlex.quote(remote_dir)
    return f"if [ -f {d}/{PID_FILE} ]; then kill $(cat {d}/{PID_FILE}) 2>/dev/null; fi; rm -rf {d}"


def write_job(staging: pathlib.Path, tasks: list[dict[str, Any]], inputs: Mapping[str, np.ndarray],
              models: Mapping[str, bytes], deadline_s: float) -> None:
    """Fill ``staging`` with the runner, the job file, the inputs npz and the model files."""
    shutil.copyfile(RUNNER_FILE, staging / "device_runner.py")
    for name, data in models.items():
        (staging / pathlib.PurePosixPath(name).name).write_bytes(data)
    if inputs:
        np.savez(staging / INPUTS_FILE, **{k: np.require(v, requirements="C") for k, v in inputs.items()})
    job = {"deadline_s": int(max(1, deadline_s)), "tasks": tasks}
    (staging / JOB_FILE).write_text(json.dumps(job), encoding="utf-8")


@contextlib.contextmanager
def staging_dir() -> Iterator[pathlib.Path]:
    """A host-side temp dir holding what is copied to the device."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="edgec-stage-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_job(transport: Transport, staging: pathlib.Path, deadline_s: float) -> dict[str, Any]:
    """Copy ``staging`` to a fresh device dir, run the runner, always remove the dir, parse the result."""
    remote = transport.make_dir()
    try:
        transport.push(sorted(staging.iterdir()), remote)
        proc = transport.execute(runner_command(remote, transport.python), deadline_s + TRANSPORT_MARGIN_S)
    finally:
        transport.remove(remote)
    return parse_runner_output(transport.device, transport.python, proc)


def parse_runner_output(device: Device, python: str, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The runner's JSON, or a DeviceError naming the device and what to do."""
    lines = proc.stdout.splitlines()
    for line in reversed(lines):
        if line.startswith(RESULT_MARK) and proc.returncode == 0:
            return json.loads(line[len(RESULT_MARK):])
        if line.startswith(ERROR_MARK):
            error = json.loads(line[len(ERROR_MARK):])
            if error.get("kind") == "missing-module":
                raise DeviceError(f"{device}: {error['detail']}; {PYTHON_HINT}")
            if error.get("kind") == "deadline":
                raise DeviceError(f"{device}: timed out (the runner passed its deadline); raise --timeout "
                                  "or lower --runs")
            raise DeviceError(f"{device}: the device runner failed: {error.get('detail')}")
    if proc.returncode in (126, 127):
        raise DeviceError(f"{device}: cannot run python {python!r} on the device; {PYTHON_HINT}")
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise DeviceError(f"{device}: the device runner exited with {proc.returncode}: {last}")


def decode_array(text: str) -> np.ndarray:
    """An array the runner sent as base64 .npy (no pickle)."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def timed_out(device: Device, timeout_s: float, what: str) -> DeviceError:
    """The one-line error for a transport step that ran past its time."""
    return DeviceError(f"{device}: timed out after {timeout_s:.0f} s while {what}; check the device is up "
                       "and responsive, or raise --timeout")
