"""Builds that end early: killed, interrupted, racing another build for the same output, or out of disk.

Each runs the real ``edgec`` in a subprocess on a copy of the zoo's mnist-resnet (about 0.3 MB, quantized
in a few seconds) with its own TMPDIR, so whatever it leaves behind is visible.
"""

from __future__ import annotations

import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgec.models.zoo import get_zoo_model

# A process started in the background by a shell without job control inherits SIGINT ignored, and Python
# then never raises KeyboardInterrupt; the child restores the default so the test does not depend on how
# the suite was started.
EDGEC = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from edgec.compiler.cli import main; main()"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    zoo = get_zoo_model("mnist-resnet")
    folder = tmp_path_factory.mktemp("mnist")
    shutil.copy(zoo.onnx_path(), folder / "model.onnx")
    np.savez(folder / "calib.npz", input=np.concatenate([f["input"] for f in zoo.calibration(8)])[:, None])
    return folder / "model.onnx", folder / "calib.npz"


def _workspace(tmp_path: pathlib.Path, model_files) -> tuple[pathlib.Path, dict[str, str]]:
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    for file in model_files:
        shutil.copy(file, work / file.name)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    return work, env


def _build_args(out: str = "out") -> list[str]:
    return ["-v", "build", "model.onnx", "--target", "cpu-x86", "--passes", "cleanup,fuse,quantize-int8",
            "--calib", "calib.npz", "-o", out]


def _start_and_wait_for_pass(work: pathlib.Path, env: dict[str, str], pass_name: str) -> subprocess.Popen:
    """Start a build and return once its log says ``pass_name`` is running."""
    proc = subprocess.Popen([*EDGEC, *_build_args()], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if f"pass {pass_name}" in line:
            return proc
        assert time.monotonic() < deadline, "the build never reached the pass"
    raise AssertionError(f"the build ended before pass {pass_name} (exit {proc.wait()})")


# `import onnxruntime` itself writes TMPDIR/.ses (a session id it keeps), in every run: not a build's leftover.
_LIBRARY_STATE = {".ses"}


def _left_behind(work: pathlib.Path, env: dict[str, str]) -> list[str]:
    extra = sorted(p.name for p in work.iterdir() if p.name not in ("model.onnx", "calib.npz"))
    return extra + sorted(p.name for p in pathlib.Path(env["TMPDIR"]).iterdir() if p.name not in _LIBRARY_STATE)


def test_sigkill_in_the_middle_of_a_pass_leaves_no_output(tmp_path, model_files):
    work, env = _workspace(tmp_path, model_files)
    proc = _start_and_wait_for_pass(work, env, "quantize-int8")
    proc.kill()
    proc.wait()
    # Nothing next to the inputs (no output path, no staged bundle); a killed process cannot clean its
    # own temp dir, but that is the system temp folder's business.
    assert sorted(p.name for p in work.iterdir()) == ["calib.npz", "model.onnx"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_exit_2_and_clean_up(tmp_path, model_files, sig):
    work, env = _workspace(tmp_path, model_files)
    proc = _start_and_wait_for_pass(work, env, "quantize-int8")
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(60) == 2, rest
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted; nothing was written"], rest
    assert "Traceback" not in rest
    assert not _left_behind(work, env)


def test_two_builds_to_one_output_one_wins_whole(tmp_path, model_files):
    work, env = _workspace(tmp_path, model_files)
    args = ["build", "model.onnx", "--target", "cpu-x86", "--passes", "cleanup,fuse", "--calib", "calib.npz",
            "-o", "out", "-q"]
    procs = [subprocess.Popen([*EDGEC, *args], cwd=work, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(120), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    loser = results[1][1].strip().splitlines()
    assert len(loser) == 1 and "out" in loser[0], loser
    verify = subprocess.run([*EDGEC, "verify", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_running_out_of_space_exits_2_and_leaves_no_partial_bundle(tmp_path, model_files):
    work, env = _workspace(tmp_path, model_files)
    size = (work / "model.onnx").stat().st_size
    args = ["build", "model.onnx", "--target", "cpu-x86", "--passes", "cleanup,fuse", "--calib", "calib.npz",
            "-o", "out", "-q"]
    proc = subprocess.run([*EDGEC, *args], cwd=work, env=env, capture_output=True, text=True,
                          preexec_fn=_file_size_limit(size // 2))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: out: no space left"), lines
    assert not _left_behind(work, env)
