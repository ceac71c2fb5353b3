"""A bundle's stored samples: one per distinct set of input shapes, their file names, and reading them safely.

Inputs and outputs are stored under ``input/<name>`` and ``output/<name>`` in edgec's .npz encoding of values
(``edgec.runtime.values``): a tensor as one array, a sequence as ``<key>/0``, ``<key>/1``, ... (``<key>/__empty__``
when empty), an absent optional as no key; strings as unicode arrays. Nothing needs pickle.
"""

from __future__ import annotations

import io
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgec.core.errors import BundleError
from edgec.runtime.safe_npz import NpzError, read_npz
from edgec.runtime.values import decode, encode, group_keys, shape_text, value_shape

SAMPLE_FILE = "sample.npz"  # always the first sample: app loaders and older readers know only this one
MAX_SAMPLES = 8  # sample.npz and up to 7 more, samples/1.npz ... samples/7.npz
EXTRA_SAMPLE_NAME = re.compile(r"samples/[1-9][0-9]{0,2}\.npz")


def extra_sample_file(index: int) -> str:
    """The bundle path of the ``index``-th extra sample (1-based)."""
    return f"samples/{index}.npz"


def shape_key(feeds: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The input-shape set of one sample, for telling samples apart.

    A sequence contributes its element shapes, an absent optional None.
    """
    return tuple((name, repr(value_shape(value))) for name, value in feeds.items())


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


def describe_shapes(feeds: Mapping[str, Any]) -> str:
    """``images 1x3x32x48, mask 1x32x48`` (``scalar`` for a 0-d input, ``[2x3, 4]`` for a sequence, ``absent``)."""
    return ", ".join(f"{name} {shape_text(value)}" for name, value in feeds.items())


def save_sample(path: pathlib.Path, feeds: Mapping[str, Any], outputs: Mapping[str, Any],
                dtypes: Mapping[str, str] | None = None) -> None:
    """Inputs and outputs as ``input/<name>`` and ``output/<name>`` in a plain (pickle-free) npz.

    ``dtypes`` (keyed ``input/<name>``, ``output/<name>``) gives an empty sequence's marker its element dtype.
    """
    dtypes = dtypes or {}
    arrays: dict[str, np.ndarray] = {}
    for prefix, values in (("input", feeds), ("output", outputs)):
        for name, value in values.items():
            key = f"{prefix}/{name}"
            arrays |= encode(key, value, dtypes.get(key, "float32"))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(buffer.getvalue())


def holds_sequence(spec: Mapping[str, Any]) -> bool:
    """Whether a manifest input/output spec's value, when present, is a list of arrays."""
    kind = spec.get("kind", "tensor")
    return kind == "sequence" or (kind == "optional" and spec.get("element_kind") == "sequence")


def load_sample(path: pathlib.Path, rel: str, manifest: dict[str, Any],
                source: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs, stored outputs) of the bundle's sample file ``rel``, without pickle, checked against the manifest.

    A sequence comes back as a list of arrays and an absent optional as None.
    """
    try:  # each member's size is checked before it is read: a sample cannot be a decompression bomb
        arrays = read_npz(path.read_bytes())
    except (NpzError, OSError) as exc:
        raise BundleError(f"{source}: {rel} is not a plain npz archive ({exc})") from exc
    values: dict[str, dict[str, Any]] = {}
    for key, prefix in (("inputs", "input/"), ("outputs", "output/")):
        group = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
        specs = manifest[key]
        names = [spec["name"] for spec in specs]
        try:
            keys, stray = group_keys(group, {spec["name"]: holds_sequence(spec) for spec in specs})
        except ValueError as exc:
            raise BundleError(f"{source}: {rel} {key}: {exc}") from exc
        missing = [s["name"] for s in specs if s["name"] not in keys and s.get("kind", "tensor") != "optional"]
        if stray or missing:
            raise BundleError(f"{source}: {rel} {key} {sorted(group)} do not match the manifest's {names}")
        values[key] = {spec["name"]: decode(group, keys.get(spec["name"]), holds_sequence(spec),
                                             spec.get("dtype") == "object")
                       for spec in specs}
    return values["inputs"], values["outputs"]
