"""Read an ``.npz`` from someone else without letting it pick the memory edgec uses or run code.

``np.load`` trusts each member's header: a 1 KB member can declare a 1 GiB array, or inflate to one, and
numpy allocates it before anything can object. Here each member's declared size (the zip's and the
.npy header's) is checked against a limit before a byte of its data is read, object arrays (pickle)
are refused, and a member that ends early is an error. Errors name the member.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

DEFAULT_MAX_MEMBER_BYTES = 512 << 20  # per array; a caller that knows its arrays' sizes passes its own


class NpzError(ValueError):
    """An .npz member that is malformed, too big, or holds Python objects; the message names it."""


def read_npz(source: str | os.PathLike[str] | bytes, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
             ) -> dict[str, np.ndarray]:
    """Every array of the archive by key (member name without ``.npy``), each checked before it is read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise NpzError(f"not an .npz archive ({_first_line(err)})") from err
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            key = info.filename.removesuffix(".npy")
            try:
                arrays[key] = _read_member(archive, info, max_member_bytes)
            except NpzError:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
                raise NpzError(f"member {key!r}: cannot read it ({_first_line(err)})") from err
    return arrays


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> np.ndarray:
    key = info.filename.removesuffix(".npy")
    if info.file_size > limit + 65536:  # an .npy header is far below 64 KiB
        raise NpzError(f"member {key!r} inflates to {info.file_size} bytes, over the {limit}-byte limit")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(member)
        if dtype.hasobject:
            raise NpzError(f"member {key!r} holds Python objects (pickle), which edgec never loads")
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a declared 2**80 elements cannot overflow
        if nbytes > limit:
            raise NpzError(f"member {key!r} declares shape {tuple(shape)} {dtype} ({nbytes} bytes), over the "
                           f"{limit}-byte limit")
        member.seek(0)  # checked: now numpy reads it, in chunks into one array of the declared size
        return np.lib.format.read_array(member, allow_pickle=False)


def npz_limit(arrays_bytes: Mapping[str, int], samples: int, floor: int = DEFAULT_MAX_MEMBER_BYTES) -> int:
    """A member limit for ``samples`` samples of arrays this big (bytes per sample by key), at least ``floor``."""
    biggest = max(arrays_bytes.values(), default=0)
    return max(floor, 4 * samples * biggest)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
