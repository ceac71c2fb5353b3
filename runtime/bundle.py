"""Write a deployable bundle (directory or .zip) atomically: model files, manifest, sample, app loader.

The format (schema_version 1: files, manifest keys, checksums, samples, what loading and verification
check) is specified in docs/bundle-format.md; change that file with this one.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from edgec.core.errors import BundleError
from edgec.runtime import mobile
from edgec.runtime._samples import (
    SAMPLE_FILE,
    describe_shapes,
    distinct_shapes,
    extra_sample_file,
    holds_sequence,
    save_sample,
)
from edgec.runtime.session import make_session, run
from edgec.runtime.values import kind_phrase, value_kind, value_shape
from edgec.targets.profile import TargetProfile

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
REQUIRED_KEYS = ("schema_version", "edgec_version", "created", "target", "execution_providers",
                 "session_options", "onnxruntime_version", "model_file", "model_files", "inputs", "outputs",
                 "passes", "metrics", "files")


def file_sha256(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def edgec_version() -> str:
    """The installed edgec version, or ``0+unknown`` when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("edgec")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _value_specs(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    specs = []
    for value in values:
        try:
            kind = value_kind(value.type)
        except ValueError as exc:
            raise BundleError(f"{value.name} is {exc}: only tensors, sequences of tensors and optionals of "
                              "those can be bundled") from exc
        tensor = kind.tensor
        dims: list[int | str | None] = []
        for d in tensor.shape.dim if tensor.HasField("shape") else []:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = dims if tensor.HasField("shape") else None
        spec: dict[str, Any] = {"name": value.name, "shape": shape, "dtype": dtype}
        if kind.kind != "tensor":  # tensors keep the schema's original three keys
            spec["kind"] = kind.kind
        if kind.kind == "optional":
            spec["element_kind"] = "sequence" if kind.sequence else "tensor"
        specs.append(spec)
    return specs


def _check_tensors_only(specs: tuple[list, list], target: TargetProfile) -> None:
    """App loaders (Kotlin, Swift) and the node/web runners feed and read tensors only."""
    for where, group in (("input", specs[0]), ("output", specs[1])):
        for spec in group:
            if spec.get("kind", "tensor") != "tensor":
                what = kind_phrase(spec["kind"], holds_sequence(spec))
                raise BundleError(f"{where} {spec['name']!r} is {what}: {target.name} bundles are fed by app loaders "
                                  "that take tensors only; build for a host target such as cpu-x86")


def _check_value(spec: dict[str, Any], value: Any) -> Any:
    """One sample input as the model takes it: a contiguous array, a list of them, or None (an absent optional)."""
    name, kind = spec["name"], spec.get("kind", "tensor")
    if value is None:
        if kind != "optional":
            raise BundleError(f"sample input {name!r} is None; only an optional input may be absent")
        return None
    sequence = holds_sequence(spec)
    if sequence != isinstance(value, list | tuple):
        raise BundleError(f"sample input {name!r} is {kind_phrase(kind, sequence)}: expected "
                          f"{'a list of arrays' if sequence else 'an array'}, got {type(value).__name__}")
    arrays = [np.require(v, requirements="C") for v in (value if sequence else [value])]  # keeps 0-d arrays 0-d
    for i, array in enumerate(arrays):
        if array.dtype.name != spec["dtype"]:
            what = f"sample input {name!r}" + (f" element {i}" if sequence else "")
            raise BundleError(f"{what} is {array.dtype.name}, the model takes {spec['dtype']}")
    return arrays if sequence else arrays[0]


def _check_feeds(inputs: list[dict[str, Any]], feeds: Mapping[str, Any]) -> dict[str, Any]:
    """The sample inputs as contiguous arrays (lists of them for sequences), checked against the graph inputs."""
    names = [spec["name"] for spec in inputs]
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise BundleError(f"sample input {extra[0]!r} is not a model input; inputs: {', '.join(names)}")
    checked = {}
    for spec in inputs:
        if spec["name"] not in feeds and spec.get("kind", "tensor") != "optional":
            raise BundleError(f"sample inputs lack model input {spec['name']!r}")
        checked[spec["name"]] = _check_value(spec, feeds.get(spec["name"]))
    return checked


def _store_samples(root: pathlib.Path, model_file: str, target: TargetProfile, samples: Sequence[dict[str, Any]],
                   specs: tuple[list, list]) -> list[dict[str, Any]]:
    """Run the shipped file on each sample and save inputs and outputs: sample.npz, then samples/<n>.npz."""
    # The stored outputs come from the file the device loads, run as the manifest says.
    session = make_session(root / model_file, target)
    dtypes = {f"{where}/{spec['name']}": spec["dtype"] for where, group in (("input", specs[0]), ("output", specs[1]))
              for spec in group}
    entries = []
    for index, feeds in enumerate(samples):
        rel = extra_sample_file(index) if index else SAMPLE_FILE
        try:
            outputs = run(session, feeds)
        except Exception as exc:  # ORT's own error types: the shipped model cannot run at these shapes
            reason = " ".join(str(exc).split()) or type(exc).__name__  # ORT's message, on one line
            raise BundleError(f"{model_file}: fails on the sample with {describe_shapes(feeds)}: {reason}") from exc
        save_sample(root / rel, feeds, outputs, dtypes)
        entries.append({"file": rel, "input_shapes": {k: value_shape(v) for k, v in feeds.items()}})
    return entries


def _manifest(target: TargetProfile, model_file: str, specs: tuple[list, list], pass_records: Sequence[dict],
              metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    model_files = {"onnxruntime": ONNX_FILE, target.runtime: model_file}
    return {
        "schema_version": SCHEMA_VERSION,
        "edgec_version": edgec_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "target": {"name": target.name, "profile": target.to_json()},
        "execution_providers": target.ep_names,
        "session_options": {"graph_optimization_level": target.graph_optimization_level,
                            "intra_op_num_threads": target.intra_op_num_threads},
        "onnxruntime_version": ort.__version__,
        "model_file": model_file,
        "model_files": model_files,
        "inputs": specs[0],
        "outputs": specs[1],
        "passes": [dict(r) for r in pass_records],
        "metrics": dict(metrics or {}),
        "files": {},
    }


def _json_default(value: Any) -> Any:
    """Turn the numpy scalars/arrays and paths in caller records into plain JSON."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON serializable")


def _fill(root: pathlib.Path, *, model: onnx.ModelProto, target: TargetProfile,
          samples: Sequence[Mapping[str, np.ndarray]], pass_records: Sequence[dict],
          metrics: Mapping[str, Any] | None) -> None:
    """Write every bundle file into the empty directory ``root``; ``samples[0]`` becomes sample.npz."""
    specs = (_value_specs(model.graph.input), _value_specs(model.graph.output))
    init_names = {i.name for i in model.graph.initializer}
    specs[0][:] = [s for s in specs[0] if s["name"] not in init_names]
    if target.is_mobile or target.loader_sample:
        _check_tensors_only(specs, target)
    kept, n_shapes = distinct_shapes([_check_feeds(specs[0], sample) for sample in samples])
    if n_shapes > len(kept):
        log.warning("the samples have %d distinct input shapes; the bundle stores the first %d", n_shapes, len(kept))
    onnx.save_model(model, root / ONNX_FILE)
    model_file, style = ONNX_FILE, None
    if target.is_mobile:
        style = mobile.ort_style_for(model, target)
        model_file = mobile.convert_to_ort(root / ONNX_FILE, root, target, style)[0].name
    manifest = _manifest(target, model_file, specs, pass_records, metrics)
    manifest["samples"] = _store_samples(root, model_file, target, kept, specs)
    manifest["distinct_sample_shapes"] = n_shapes
    if style:
        manifest["session_options"]["ort_optimization_style"] = style
    if target.loader_sample:
        sample_specs = [s | {"sample_shape": list(kept[0][s["name"]].shape)} for s in specs[0]]
        versions = {"edgec": manifest["edgec_version"], "onnxruntime": manifest["onnxruntime_version"]}
        name, text = mobile.render_loader_sample(target, model_file, sample_specs, specs[1], versions)
        (root / name).write_text(text, encoding="utf-8")
    manifest["files"] = {p.relative_to(root).as_posix(): file_sha256(p)
                         for p in sorted(root.rglob("*")) if p.is_file()}
    text = json.dumps(manifest, indent=2, default=_json_default)
    (root / MANIFEST).write_text(text + "\n", encoding="utf-8")


def publish(staged: pathlib.Path, out: pathlib.Path, force: bool, trash: pathlib.Path) -> None:
    """Move the finished ``staged`` file or dir to ``out``.

    With force, the old ``out`` is moved into ``trash`` (inside the staging dir, removed with it) only
    now, and moved back if the final rename fails.
    """
    old = None
    if out.exists() or out.is_symlink():
        if not force:
            raise BundleError(f"{out}: already exists (use force to replace it)")
        old = trash
        out.rename(old)
    try:
        if staged.is_dir():
            staged.rename(out)  # fails (ENOTEMPTY/EEXIST) on a bundle another build published meanwhile
        else:
            os.link(staged, out)  # unlike rename, never replaces a file that appeared meanwhile
    except BaseException as exc:
        if old is not None and not (out.exists() or out.is_symlink()):
            old.rename(out)
        if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise BundleError(f"{out}: another build wrote it while this one ran; this one wrote nothing") from exc
        raise


def _zip_dir(root: pathlib.Path, zip_path: pathlib.Path) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())


def write_bundle(out: str | os.PathLike[str], *, model: onnx.ModelProto, target: TargetProfile,
                 sample_inputs: Mapping[str, np.ndarray], pass_records: Sequence[dict] = (),
                 metrics: Mapping[str, Any] | None = None, fmt: Literal["dir", "zip"] = "dir",
                 force: bool = False, extra_samples: Sequence[Mapping[str, np.ndarray]] = ()) -> pathlib.Path:
    """Write a bundle for ``target`` to ``out`` (a directory, or a zip file with ``fmt="zip"``).

    ``sample_inputs`` is stored as sample.npz. Of ``extra_samples`` (e.g. the other calibration feeds), the
    first of each input-shape set not stored yet is kept as samples/<n>.npz, up to 8 in all; every
    stored sample gets the shipped model's outputs on it.

    Everything is built in a hidden temp dir next to ``out`` and renamed into place at the end, so
    ``out`` either holds a complete bundle or is untouched (also on KeyboardInterrupt). An existing
    ``out`` raises BundleError unless ``force``; with ``force`` it is replaced only once the new bundle
    is complete.
    """
    out = pathlib.Path(out)
    if fmt not in ("dir", "zip"):
        raise BundleError(f"bundle format must be 'dir' or 'zip', not {fmt!r}")
    if (out.exists() or out.is_symlink()) and not force:
        raise BundleError(f"{out}: already exists (use force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        root = staging / "bundle"
        root.mkdir()
        _fill(root, model=model, target=target, samples=[sample_inputs, *extra_samples],
              pass_records=pass_records, metrics=metrics)
        if fmt == "zip":
            _zip_dir(root, staging / "bundle.zip")
            publish(staging / "bundle.zip", out, force, trash=staging / "old")
        else:
            publish(root, out, force, trash=staging / "old")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote bundle %s for %s", out, target.name)
    return out
