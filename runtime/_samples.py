"""A bundle's stored samples: one per distinct set of input shapes, their file names, and reading them safely."""

from __future__ import annotations

import io
import pathlib
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgec.compiler.errors import BundleError

SAMPLE_FILE = "sample.npz"  # always the first sample: app loaders and older readers know only this one
MAX_SAMPLES = 8  # sample.npz and up to 7 more, samples/1.npz ... samples/7.npz
EXTRA_SAMPLE_NAME = re.compile(r"samples/[1-9][0-9]{0,2}\.npz")


def extra_sample_file(index: int) -> str:
    """The bundle path of the ``index``-th extra sample (1-based)."""
    return f"samples/{index}.npz"


def shape_key(feeds: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The input-shape set of one sample, for telling samples apart."""
    return tuple((name, tuple(np.shape(array))) for name, array in feeds.items())


def distinct_shapes(samples: Sequence[Mapping[str, np.ndarray]],
                    cap: int = MAX_SAMPLES) -> tuple[list[Mapping[str, np.ndarray]], int]:
    """The first sample of each distinct input-shape set, in order and at most ``cap``; and how many sets there were."""
    seen: set[tuple[Any, ...]] = set()
    kept: list[Mapping[str, np.ndarray]] = []
    for sample in samples:
        key = shape_key(sample)
        if key in seen:
            continue
        seen.add(key)
        if len(kept) < cap:
            kept.append(sample)
    return kept, len(seen)


def describe_shapes(feeds: Mapping[str, np.ndarray]) -> str:
    """``images 1x3x32x48, mask 1x32x48`` (``scalar`` for a 0-d input)."""
    return ", ".join(f"{name} {'x'.join(map(str, np.shape(array))) or 'scalar'}" for name, array in feeds.items())


def save_sample(path: pathlib.Path, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Inputs and outputs as ``input/<name>`` and ``output/<name>`` in a plain (pickle-free) npz."""
    arrays = {f"input/{k}": v for k, v in feeds.items()} | {f"output/{k}": v for k, v in outputs.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(buffer.getvalue())


def load_sample(path: pathlib.Path, rel: str, manifest: dict[str, Any],
                source: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, stored outputs) of the bundle's sample file ``rel``, without pickle, checked against the manifest."""
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{source}: {rel} is not a plain npz archive ({exc})") from exc
    inputs = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
    outputs = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
    for key, group in (("inputs", inputs), ("outputs", outputs)):
        names = [spec["name"] for spec in manifest[key]]
        if sorted(names) != sorted(group):
            raise BundleError(f"{source}: {rel} {key} {sorted(group)} do not match the manifest's {names}")
    return inputs, outputs
