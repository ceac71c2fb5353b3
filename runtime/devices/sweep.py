"""Device latency files: single-op micro-benchmarks at the zoo's shapes, measured on a device, as JSON.

The file (schema ``edgec-device-latency/1``) is what the search's latency model reads::

    {"schema", "created", "device", "target", "threads", "level", "environment", "source_models",
     "precisions", "skipped_precisions": {format: reason},
     "entries": [{"key", "op_type", "precision", "source_model", "inputs": [{"shape", "dtype", "constant"}],
                  "output_shapes", "attributes", "flops", "ok",
                  "wall_ms": {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"},
                  "kernel_ms", "nodes": [{"op_type", "provider", "total_ms"}], "providers"} | {..., "ok": false,
                  "error"}]}

``wall_ms`` is ``session.run`` wall time (it includes ORT's fixed per-run overhead, tens of microseconds);
``kernel_ms`` is the sum of the kernels' times from ORT's profiler, which is what a per-node predictor sums.
Local and ssh devices run the micro-models with device_runner.py; an adb phone runs them with the user's
``onnxruntime_perf_test`` (``adb.sweep_on_adb``: its statistics give ``wall_ms``, its profiler trace the
kernels), in the target's model format (``.ort`` for android-arm64).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import onnx

from edgec.core import progress
from edgec.core.errors import ConfigError
from edgec.core.stats import model_stats
from edgec.runtime.devices._jobs import INPUTS_FILE, run_job, staging_dir, write_job
from edgec.runtime.devices._microbench import QDQ_OPS, OpSpec, build_fp32, collect_specs, to_fp16, to_int8_qdq
from edgec.runtime.devices.adb import open_adb, sweep_on_adb
from edgec.runtime.devices.api import as_device, transport_for
from edgec.runtime.devices.device import Device
from edgec.targets.profile import TargetProfile
from edgec.targets.registry import get_target

log = logging.getLogger(__name__)

SCHEMA = "edgec-device-latency/1"
# Target quantization formats this sweep can build micro-models for, and the precision name it records.
FORMAT_PRECISION = {"int8-qdq": "int8", "fp16": "fp16"}


def _precisions(target: TargetProfile) -> tuple[list[str], dict[str, str]]:
    chosen, skipped = ["fp32"], {}
    for fmt in target.quantization_formats:
        if fmt in FORMAT_PRECISION:
            chosen.append(FORMAT_PRECISION[fmt])
        else:
            skipped[fmt] = "no micro-benchmark builder for this format yet"
    return chosen, skipped


def _variant(spec: OpSpec, precision: str, target: TargetProfile):
    model, feeds = build_fp32(spec)
    flops = model_stats(model).flops
    if precision == "fp16":
        model, feeds = to_fp16(model, feeds)
    elif precision == "int8":
        model = to_int8_qdq(model, feeds, target.activation_dtype)
    return model, feeds, flops


def sweep_tasks(specs: list[OpSpec], precisions: list[str], target: TargetProfile, *, runs: int, warmup: int,
                threads: int) -> tuple[list[dict], dict, dict, dict[str, dict], list[dict]]:
    """The sweep's jobs: (tasks, inputs by ``<task id>/<input>``, model files, each task's facts, failed builds)."""
    tasks, inputs, files, meta, failed = [], {}, {}, {}, []
    for i, spec in enumerate(progress.track(specs, "device sweep: building micro-models")):
        for precision in precisions:
            if precision == "int8" and spec.op_type not in QDQ_OPS:
                continue
            task_id = f"m{i:03d}-{precision}"
            info = {"key": f"{spec.key()}|{precision}", "precision": precision, **spec.describe()}
            try:
                model, feeds, flops = _variant(spec, precision, target)
            except Exception as exc:  # a shape ORT's quantizer refuses is a fact for the file, not a crash
                failed.append({**info, "ok": False, "error": f"build: {type(exc).__name__}: {exc}"})
                continue
            meta[task_id] = {**info, "flops": flops}
            files[f"{task_id}.onnx"] = model.SerializeToString()
            inputs.update({f"{task_id}/{k}": v for k, v in feeds.items()})
            tasks.append({"id": task_id, "model": f"{task_id}.onnx", "inputs": INPUTS_FILE, "runs": runs,
                          "warmup": warmup, "threads": threads, "level": target.graph_optimization_level,
                          "providers": target.ep_names, "profile_runs": 5})
    return tasks, inputs, files, meta, failed


def _entry(meta: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    if not result.get("ok"):
        return {**meta, "ok": False, "error": result.get("error", "unknown")}
    nodes = [{"op_type": n["op_type"], "provider": n["provider"], "total_ms": n["total_ms"]}
             for n in result.get("nodes", [])]
    return {**meta, "ok": True, "wall_ms": result["latency_ms"], "kernel_ms": sum(n["total_ms"] for n in nodes),
            "nodes": nodes, "providers": sorted({n["provider"] for n in nodes})}


def export_device_file(device: str | Device, path: str | os.PathLike[str], *,
                       models: Sequence[tuple[str, onnx.ModelProto]], target: str | None = None,
                       max_per_op: int = 6, runs: int = 30, warmup: int = 5, threads: int | None = None,
                       python: str | None = None,
                       ssh_config: str | None = None, timeout_s: float = 1800.0,
                       remote_base: str | None = None, runner: str | None = None,
                       big_cores: bool = True) -> dict[str, Any]:
    """Measure the sweep on ``device`` with ``target``'s session options and write it to ``path``.

    ``models`` are (name, model) pairs whose ops and shapes the sweep's micro-models copy (the compiler's
    ``load_sweep_models`` resolves zoo names and paths). ``target`` is a target name or the path of a
    bundle (its manifest's target is used); default cpu-x86. An adb device needs ``runner`` (an Android
    build of onnxruntime_perf_test) and is pinned to its big cores unless ``big_cores`` is false.
    """
    dev = as_device(device)
    if max_per_op < 1 or runs < 1 or warmup < 0:
        raise ConfigError(f"--export-device: max_per_op and runs must be >= 1 (got {max_per_op}, {runs})")
    phone = open_adb(dev, runner) if dev.kind == "adb" else None  # its one-line errors before the long build
    profile = get_target(_target_name(target))
    threads = threads or profile.intra_op_num_threads
    specs = collect_specs(list(models), max_per_op)
    tasks, inputs, files, meta, failed = sweep_tasks(specs, _precisions(profile)[0], profile, runs=runs,
                                                     warmup=warmup, threads=threads)
    log.info("sweep: %d micro-models (%d could not be built) on %s", len(tasks), len(failed), dev)
    if phone is not None:
        raw = sweep_on_adb(*phone, tasks, files, inputs, profile, warmup=warmup, big_cores=big_cores,
                           timeout_s=timeout_s)
    else:
        transport = transport_for(dev, python=python, ssh_config=ssh_config, remote_base=remote_base)
        # One job on the device; its runner reports each micro-model it has timed on stderr as it goes.
        with staging_dir() as staging, progress.task(f"device sweep: timing micro-models on {dev}",
                                                     total=len(tasks)) as step:
            write_job(staging, tasks, inputs, files, timeout_s)
            raw = run_job(transport, staging, timeout_s, lambda done, _total: step.update(completed=done))
    doc = device_document(str(dev), profile, threads, raw, meta, failed, [name for name, _ in models])
    _write_atomic(pathlib.Path(path), json.dumps(doc, indent=1))
    return doc


def device_document(device: str, target: TargetProfile, threads: int, raw: dict[str, Any], meta: dict[str, dict],
                    failed: list[dict], source_models: list[str]) -> dict[str, Any]:
    """The device file's document from a runner's ``{"environment", "results"}`` and the tasks' ``meta``."""
    precisions, skipped = _precisions(target)
    return {"schema": SCHEMA, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device, "target": target.name, "threads": threads,
            "level": target.graph_optimization_level, "environment": raw["environment"],
            "source_models": source_models, "precisions": precisions, "skipped_precisions": skipped,
            "entries": [_entry(meta[r["id"]], r) for r in raw["results"]] + failed}


def _target_name(target: str | None) -> str:
    if target and pathlib.Path(target).exists():
        from edgec.runtime.loader import load_bundle

        return str(load_bundle(target).manifest["target"]["name"])
    return target or "cpu-x86"


def _write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass(frozen=True)
class DeviceLatencyTable:
    """A device file, read back: measured kernel times keyed by op, precision and input shapes."""

    device: str
    target: str
    entries: tuple[dict[str, Any], ...]

    def lookup(self, op_type: str, precision: str, input_shapes: Sequence[Sequence[int]]) -> float | None:
        """The measured kernel ms of an exact (op, precision, input shapes) match, else None."""
        want = [list(s) for s in input_shapes]
        for entry in self.entries:
            if (entry["ok"] and entry["op_type"] == op_type and entry["precision"] == precision
                    and [i["shape"] for i in entry["inputs"]] == want):
                return float(entry["kernel_ms"])
        return None


def load_device_file(path: str | os.PathLike[str]) -> DeviceLatencyTable:
    """Read and check a device latency file; a wrong schema or missing key names the file."""
    try:
        doc = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable device latency file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ConfigError(f"{path}: schema is not {SCHEMA!r}")
    for key in ("device", "target", "entries"):
        if key not in doc:
            raise ConfigError(f"{path}: missing key {key!r}")
    return DeviceLatencyTable(doc["device"], doc["target"], tuple(doc["entries"]))
