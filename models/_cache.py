"""The zoo's on-disk cache under $EDGEC_CACHE/zoo: per-model folders, a file lock, atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator


def cache_root() -> pathlib.Path:
    """``$EDGEC_CACHE`` (default ``~/.cache/edgec``)."""
    return pathlib.Path(os.environ.get("EDGEC_CACHE", "~/.cache/edgec")).expanduser()


def model_dir(name: str) -> pathlib.Path:
    """``$EDGEC_CACHE/zoo/<name>``, created if missing."""
    path = cache_root() / "zoo" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(target: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock for ``target`` so parallel test workers build an artifact only once.

    One lock per artifact, so building one artifact may build (and lock) another on the way.
    """
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(target: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``target``, then move it into place in one step."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes 0600; cached artifacts are meant to be shared read-only
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: pathlib.Path, text: str) -> None:
    """Atomically write a small text file."""
    atomic_write(target, lambda tmp: tmp.write_text(text))
