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
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from edgec.runtime.devices.device import Device, DeviceError
from edgec.runtime.devices.device_runner import ERROR_MARK, PROGRESS_MARK, RESULT_MARK

log = logging.getLogger(__name__)

RUNNER_FILE = pathlib.Path(__file__).with_name("device_runner.py")
JOB_FILE = "job.json"
INPUTS_FILE = "inputs.npz"
PID_FILE = "runner.pid"
REMOTE_PREFIX = "edgec-"
# Connection set-up and copying on top of the runner's own deadline.
TRANSPORT_MARGIN_S = 20.0
PYTHON_HINT = "install Python 3 with numpy and onnxruntime there, or name its python with --device-python"


OnProgress = Callable[[int, int], None]


class Transport(Protocol):
    """How files reach a device and how a command runs there."""

    device: Device
    python: str

    def make_dir(self) -> str:
        """Create a fresh temporary directory on the device and return its path."""

    def push(self, files: Sequence[pathlib.Path], remote_dir: str) -> None:
        """Copy ``files`` into ``remote_dir``."""

    def execute(self, command: str, timeout_s: float,
                on_progress: OnProgress | None = None) -> subprocess.CompletedProcess[str]:
        """Run a POSIX shell command on the device; ``on_progress(done, total)`` for each progress line."""

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


def run_job(transport: Transport, staging: pathlib.Path, deadline_s: float,
            on_progress: OnProgress | None = None) -> dict[str, Any]:
    """Copy ``staging`` to a fresh device dir, run the runner, always remove the dir, parse the result.

    ``on_progress(done, total)`` hears of each task the runner finishes, as it finishes it.
    """
    remote = transport.make_dir()
    try:
        transport.push(sorted(staging.iterdir()), remote)
        proc = transport.execute(runner_command(remote, transport.python), deadline_s + TRANSPORT_MARGIN_S,
                                 on_progress)
    finally:
        transport.remove(remote)
    return parse_runner_output(transport.device, transport.python, proc)


def run_command(argv: list[str], timeout_s: float,
                on_progress: OnProgress | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True)``; with ``on_progress``, stderr is read as it comes.

    The runner's progress lines go to ``on_progress`` (and are left out of the stderr returned); the rest is
    kept. Raises ``subprocess.TimeoutExpired`` after ``timeout_s``, the process killed, as ``run`` does.
    """
    if on_progress is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    return _run_streaming(argv, timeout_s, on_progress)


def _run_streaming(argv: list[str], timeout_s: float, on_progress: OnProgress) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    stdout: list[str] = []
    stderr: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            parts = line.split()
            if len(parts) == 3 and parts[0] == PROGRESS_MARK and parts[1].isdigit() and parts[2].isdigit():
                on_progress(int(parts[1]), int(parts[2]))
            else:
                stderr.append(line)

    def read_stdout() -> None:
        assert proc.stdout is not None
        stdout.append(proc.stdout.read())

    readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
    return subprocess.CompletedProcess(argv, returncode, "".join(stdout), "".join(stderr))


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
    said = [line for line in proc.stderr.strip().splitlines() if not line.startswith(PROGRESS_MARK)]
    raise DeviceError(f"{device}: the device runner exited with {proc.returncode}: {(said or ['no output'])[-1]}")


def decode_array(text: str) -> np.ndarray:
    """An array the runner sent as base64 .npy (no pickle)."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def timed_out(device: Device, timeout_s: float, what: str) -> DeviceError:
    """The one-line error for a transport step that ran past its time."""
    return DeviceError(f"{device}: timed out after {timeout_s:.0f} s while {what}; check the device is up "
                       "and responsive, or raise --timeout")
