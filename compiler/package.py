"""Several targets in one build: a package folder with one bundle per target and package.json listing them.

``edgec build MODEL --target cpu-x86,android-arm64 -o OUT`` writes::

    OUT/
    ├── cpu-x86/                     a normal bundle (``edgec.runtime.load`` reads it)
    ├── cpu-x86.search-choice.toml   after a search: its files, next to each bundle as for one target
    ├── android-arm64/
    ├── ...
    └── package.json                 the variants: target, EPs, latency, accuracy, choice, bundle, manifest sha256

The model and calibration data are loaded once. Each target then gets its own search (when asked), one
after another, each with its own latency source, sharing the candidate builds that several targets build
identically (``compiler.search.shared``); the final pipeline is shared the same way. The package appears
whole or not at all: it is written in a temporary folder next to OUT and renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgec.compiler.build import BuildResult, PreparedBuild, build_for_target, check_output, prepare_build
from edgec.compiler.config import BuildConfig, device_files
from edgec.compiler.search.latency_model import PredictedLatency
from edgec.compiler.search.shared import SharedBuilds, SharedFinals
from edgec.core.errors import BundleError
from edgec.runtime.bundle import MANIFEST, edgec_version, publish
from edgec.targets.profile import TargetProfile
from edgec.targets.registry import get_target

PACKAGE_FILE = "package.json"
SCHEMA_VERSION = 1


@dataclasses.dataclass
class PackageResult:
    """What a multi-target build produced: the package folder, each target's build, and package.json."""

    path: Path
    variants: list[BuildResult]
    manifest: dict[str, Any]


def run_package(cfg: BuildConfig, on_phase: Callable[[str], None] = lambda _: None) -> PackageResult:
    """Build one bundle per target of ``cfg.targets`` into the package ``cfg.output``; nothing is written on error."""
    targets = [get_target(name) for name in cfg.targets]
    files = device_files(cfg)
    check_output(cfg)
    prepared = prepare_build(cfg, targets, on_phase)
    shared, finals = SharedBuilds(), SharedFinals()
    variants: list[BuildResult] = []
    entries: list[dict[str, Any]] = []
    try:
        with _staged(cfg.output, cfg.force) as root:
            for i, target in enumerate(targets):
                shared.keep = i < len(targets) - 1  # nothing after the last search could take its builds
                bundle = root / (target.name + (".zip" if cfg.fmt == "zip" else ""))
                target_cfg = dataclasses.replace(cfg, target=target.name, device_file=files.get(target.name),
                                                 output=bundle, force=False)
                result = build_for_target(target_cfg, prepared, target, _prefixed(on_phase, target.name),
                                          shared, finals)
                builds = _builds(target.name, shared, finals)
                entries.append(_variant(result, target, bundle, root, files.get(target.name), prepared, builds))
                variants.append(result)
            manifest = _manifest(cfg, entries)
            (root / PACKAGE_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    finally:
        shared.close()
    for result in variants:  # the paths the variants were written at, once the package is in place
        result.bundle = cfg.output / result.bundle.relative_to(root)
        result.notes = [note.replace(str(root), str(cfg.output)) for note in result.notes]
    return PackageResult(cfg.output, variants, manifest)


def _prefixed(on_phase: Callable[[str], None], name: str) -> Callable[[str], None]:
    """Progress for one target: its phases prefixed with its name."""
    return lambda phase: on_phase(f"{name}: {phase}")


@contextlib.contextmanager
def _staged(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder next to ``out`` to write the package in, renamed to ``out`` if the block succeeds.

    On any error (or Ctrl-C) it is removed and ``out`` is left as it was. With ``force`` an existing ``out``
    is replaced only once the new package is complete, and put back if the final rename fails.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        root = staging / "package"
        root.mkdir()
        yield root
        if (out.exists() or out.is_symlink()) and not force:
            raise BundleError(f"{out}: already exists; pass --force to replace it")
        publish(root, out, force, staging / "old")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _builds(name: str, shared: SharedBuilds, finals: SharedFinals) -> dict[str, int]:
    """How many of a target's builds ran for it, and how many it took from an earlier target (the final one too)."""
    final_shared = name in finals.shared
    return {"built": shared.built.get(name, 0) + (not final_shared),
            "shared": shared.shared.get(name, 0) + final_shared}


def _variant(result: BuildResult, target: TargetProfile, bundle: Path, root: Path, device_file: str | None,
             prepared: PreparedBuild, builds: dict[str, int]) -> dict[str, Any]:
    """One entry of package.json's ``variants``."""
    search = result.metrics.get("search")
    return {
        "target": target.name,
        "description": target.description,
        "runtime": target.runtime,
        "execution_providers": target.ep_names,
        "bundle": bundle.relative_to(root).as_posix(),
        "manifest_sha256": _manifest_sha256(bundle),
        "latency": _latency(result.metrics, target, bundle, device_file, prepared),
        "accuracy": _accuracy(result.metrics),
        "candidate": search["chosen"]["candidate"] if search else None,
        "passes": [r.name for r in result.records],
        "builds": builds,
        "warnings": result.warnings,
    }


def _manifest_sha256(bundle: Path) -> str:
    if bundle.is_dir():
        return hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    with zipfile.ZipFile(bundle) as zf:
        return hashlib.sha256(zf.read(MANIFEST)).hexdigest()


def _model_bytes(bundle: Path) -> bytes:
    if bundle.is_dir():
        return (bundle / "model.onnx").read_bytes()
    with zipfile.ZipFile(bundle) as zf:
        return zf.read("model.onnx")


def _latency(metrics: dict[str, Any], target: TargetProfile, bundle: Path, device_file: str | None,
             prepared: PreparedBuild) -> dict[str, Any]:
    """The variant's latency: predicted from its device file where one was given, else measured on this host."""
    search = metrics.get("search")
    host_ms = search["chosen"]["latency_ms"]["measured"] if search else metrics.get("host_latency_ms", {}).get("after")
    out: dict[str, Any] = {"ms": host_ms, "source": "measured", "measured_on": "this host",
                           "target_is_this_host": target.host_measurable}
    if search and search["objective"]["latency_ms"] is not None:
        out["goal_ms"] = search["objective"]["latency_ms"]
    if device_file is None:
        return out
    if search:  # the search priced the choice (calibrated on host timings for a host target)
        predicted, label = search["chosen"]["latency_ms"]["predicted"], search["latency_source"]
    else:  # a plain build: the device file prices the bundle's model as a search would
        source = PredictedLatency(prepared.loaded.proto.SerializeToString(), device_file)
        predicted, label = source.ratios([_model_bytes(bundle)])[0] * source.baseline_ms, source.label
    del out["measured_on"]  # the host's timing stays, as host_ms
    return {**out, "ms": predicted, "source": "predicted", "device_file": os.fspath(device_file),
            "predicted_by": label, "host_ms": host_ms}


def _accuracy(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The metric named, before and after: the task metric, else the score on held-out calibration samples."""
    calibration = metrics.get("calibration", {})
    task, held = calibration.get("task"), calibration.get("held_out")
    if task:
        return {"metric": task["metric"], "before": task["before"], "after": task["after"]}
    if held:
        return {"metric": held["metric"], "before": held["before"], "after": held["after"],
                "on": "held-out calibration samples"}
    accuracy = metrics.get("accuracy")  # a trained zoo model with lossless passes: nothing was split
    if accuracy and accuracy.get("before") and accuracy.get("after"):
        name = next(iter(accuracy["after"]))
        return {"metric": name, "before": accuracy["before"][name], "after": accuracy["after"][name]}
    return None


def _manifest(cfg: BuildConfig, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "edgec_version": edgec_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": cfg.model,
        "targets": [e["target"] for e in entries],
        # Builds a target took from an earlier target's (same passes and options, same target facts read).
        "shared_builds": sum(e["builds"]["shared"] for e in entries),
        "variants": entries,
    }
