"""Run ``edgec`` on one hostile input in a child process with a memory cap, and check the error contract.

Children are forked from a fork server that has imported edgec's heavy dependencies once (onnx, ORT,
onnx-ir, numpy), so a case costs a fork, not a 2-second interpreter start. Each child:
- caps its address space (``RLIMIT_AS``) at what it had after the imports plus ``MEMORY_HEADROOM``;
- records, through a Python audit hook, every file it opens, so a read of the canary file is caught
  even when its bytes never reach an output;
- runs the CLI with stdout and stderr in files, and exits with the CLI's code (1 with the traceback
  for an uncaught exception, as the interpreter would).

The contract a case is held to (``check_contract``): the expected exit code; on a non-zero exit exactly
one stderr line, naming the culprit; never a traceback; no new files outside the output path and the
cache; the canary neither opened nor copied into any output.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pathlib
import resource
import sys
import traceback
from collections.abc import Callable, Sequence

MEMORY_HEADROOM = 768 << 20  # a 1 GiB inflation must not fit; ORT sessions of the corpus's tiny models do
TIMEOUT_S = 60
CANARY = b"EDGEC-CANARY-7f3a9c"  # bytes of a file outside every model folder; must never be read
_PRELOAD = ["numpy", "onnx", "onnx.reference", "onnxruntime", "onnx_ir", "onnxscript", "click", "rich",
            "edgec.compiler.cli", "edgec.compiler.build"]


class RunTimeoutError(AssertionError):
    """The child ran past its time limit and was killed."""


@dataclasses.dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    opened: list[str]


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile input: ``make(workdir)`` writes the files and returns the edgec arguments."""

    name: str
    make: Callable[[pathlib.Path], list[str]]
    culprit: str | Callable[[pathlib.Path], str]  # text the one stderr line must contain ('' for exit 0)
    code: int = 2


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


_CTX = _context()


def _child(args: list[str], cwd: str, out: str, err: str, opened: str, env: dict[str, str]) -> None:
    import edgec.compiler.cli as cli_module

    os.chdir(cwd)
    os.environ.update(env)
    with open(out, "wb") as out_file, open(err, "wb") as err_file:
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
    # As the interpreter sets them up under a UTF-8 locale: stdout strict, stderr backslashreplace.
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - the process ends with the case
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    paths: list[str] = []

    def audit(event: str, event_args: tuple) -> None:
        if event == "open" and isinstance(event_args[0], (str, bytes, os.PathLike)):
            paths.append(os.fsdecode(event_args[0]))

    sys.addaudithook(audit)
    usage = _vm_size()
    resource.setrlimit(resource.RLIMIT_AS, (usage + MEMORY_HEADROOM, usage + MEMORY_HEADROOM))
    code = 1
    try:
        cli_module.cli.main(args=args, prog_name="edgec", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        pathlib.Path(opened).write_text("\n".join(paths), errors="surrogateescape")
    os._exit(code)


def _vm_size() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run_edgec(args: Sequence[str], cwd: pathlib.Path, env: dict[str, str] | None = None,
              timeout_s: float = TIMEOUT_S) -> Run:
    """``edgec ARGS`` in a forked child under the memory cap; the run's code, output and opened files.

    A child still running after ``timeout_s`` is killed and RunTimeoutError raised.
    """
    logs = cwd / ".edgec-case-logs"
    logs.mkdir(exist_ok=True)
    out, err, opened = logs / "stdout", logs / "stderr", logs / "opened"
    proc = _CTX.Process(target=_child, args=(list(args), str(cwd), str(out), str(err), str(opened), env or {}))
    proc.start()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise RunTimeoutError(f"edgec {' '.join(args)} ran past {timeout_s} s")
    code = proc.exitcode if proc.exitcode is not None else -1
    read = (lambda p: p.read_text(errors="replace") if p.exists() else "")  # noqa: E731
    paths = opened.read_text(errors="surrogateescape").splitlines() if opened.exists() else []
    return Run(code, read(out), read(err), [p for p in paths if p])


def snapshot(root: pathlib.Path) -> set[str]:
    """Every path under ``root`` (links not followed), relative."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def check_contract(case: Case, run: Run, workdir: pathlib.Path, before: set[str], canary: pathlib.Path,
                   allowed: Sequence[str] = ("out", ".edgec-case-logs", "cache")) -> None:
    """The error contract for one case (see the module docstring)."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert "Traceback" not in run.stderr, f"{case.name}: traceback\n{run.stderr[-3000:]}"
    assert run.code == case.code, f"{case.name}: exit {run.code}, expected {case.code}\n{run.stderr[-2000:]}"
    culprit = case.culprit(workdir) if callable(case.culprit) else case.culprit
    if case.code != 0:
        assert len(lines) == 1, f"{case.name}: {len(lines)} stderr lines\n{run.stderr[-2000:]}"
        assert culprit in lines[0], f"{case.name}: {culprit!r} not in {lines[0]!r}"
    # OUT.report.html (and a search's OUT.pareto.png) are the bundle's documented sidecars, written next to it.
    new = {p for p in snapshot(workdir) - before
           if not p.startswith("out.") and not any(p == a or p.startswith(a + os.sep) for a in allowed)}
    assert not new, f"{case.name}: wrote outside the output path: {sorted(new)[:5]}"
    opened = [p for p in run.opened if os.path.exists(p) and os.path.samefile(p, canary)]
    assert not opened, f"{case.name}: opened the canary {canary}"
    for path in (workdir / "out").rglob("*") if (workdir / "out").exists() else []:
        if path.is_file() and not path.is_symlink():
            assert CANARY not in path.read_bytes(), f"{case.name}: canary bytes in {path}"
    assert CANARY.decode() not in run.stdout + run.stderr, f"{case.name}: canary bytes in the output"
