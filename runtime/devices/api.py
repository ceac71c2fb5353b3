"""profile_on_device and verify_on_device: run a checked bundle on a device and bring its numbers back."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
from typing import Any

import numpy as np

from edgec.core.errors import ConfigError
from edgec.runtime.devices._jobs import INPUTS_FILE, Transport, decode_array, run_job, staging_dir, write_job
from edgec.runtime.devices.device import Device, DeviceError, parse_device
from edgec.runtime.loader import SAMPLE_ATOL, SAMPLE_RTOL, LoadedBundle, VerifyCheck, VerifyReport, load_bundle
from edgec.runtime.session import compare_outputs

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
PROFILED_RUNS = 10


@dataclasses.dataclass
class DeviceVerifyReport(VerifyReport):
    """verify_bundle's report for a run on a device, with the device and what it reported about itself."""

    device: str = ""
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)


def as_device(device: str | Device) -> Device:
    """A Device from a ``--device`` string (or one already parsed)."""
    return device if isinstance(device, Device) else parse_device(device)


def transport_for(device: Device, *, python: str | None = None, ssh_config: str | None = None,
                  remote_base: str | None = None) -> Transport:
    """The transport that runs device_runner.py on ``device`` (local or ssh; adb has its own path)."""
    if device.kind == "local":
        from edgec.runtime.devices.local import LocalTransport

        return LocalTransport(python, remote_base)
    if device.kind == "ssh":
        from edgec.runtime.devices.ssh import SshTransport

        return SshTransport(device, python, ssh_config, remote_base)
    raise ConfigError(f"--device {device}: adb devices run a runner binary (--runner), not device_runner.py")


def _bundle_task(bundle: LoadedBundle, *, runs: int, warmup: int, threads: int, profile_runs: int,
                 return_outputs: bool) -> dict[str, Any]:
    model_file = pathlib.PurePosixPath(bundle.manifest["model_file"]).name
    return {"id": "model", "model": model_file, "inputs": INPUTS_FILE, "runs": runs, "warmup": warmup,
            "threads": threads, "level": bundle.manifest["session_options"]["graph_optimization_level"],
            "providers": bundle.manifest["execution_providers"], "profile_runs": profile_runs,
            "return_outputs": return_outputs}


def _run_bundle(bundle: LoadedBundle, transport: Transport, task: dict[str, Any],
                timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the task's result, the device's environment); a task that failed on the device raises."""
    bundle.check_tensor_io("device runs", outputs=bool(task.get("return_outputs")))
    inputs = {f"model/{name}": array for name, array in bundle.sample_inputs.items()}
    with staging_dir() as staging:
        write_job(staging, [task], inputs, {task["model"]: bundle.model_bytes()}, timeout_s)
        raw = run_job(transport, staging, timeout_s)
    result = raw["results"][0]
    if not result.get("ok"):
        raise DeviceError(f"{transport.device}: {task['model']} failed on the device: {result.get('error')}")
    return result, raw["environment"]


def profile_on_device(bundle_path: str | os.PathLike[str], device: str | Device, runs: int = 100,
                      warmup: int = 10, threads: int | None = None, *, top: int = 10,
                      runner: str | None = None, python: str | None = None, ssh_config: str | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S, big_cores: bool = True, ep: str | None = None,
                      remote_base: str | None = None) -> dict[str, Any]:
    """Latency p50/p90/p99, per-node times and EPs, and the device's facts, measured on ``device``.

    The bundle is checked on the host first (schema, checksums). ``threads`` defaults to the
    manifest's intra-op count. ``runner``, ``big_cores`` and ``ep`` (perf_test's ``-e``; default the
    manifest's first EP) apply to adb devices only; ``python``, ``ssh_config`` to local/ssh ones.
    """
    dev = as_device(device)
    if runs < 1 or warmup < 0 or top < 0:
        raise ConfigError(f"profile: --runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    bundle = load_bundle(bundle_path)
    threads = threads or bundle.manifest["session_options"]["intra_op_num_threads"] or 1
    if dev.kind == "adb":
        from edgec.runtime.devices.adb import profile_bundle_adb

        return profile_bundle_adb(bundle, dev, runner=runner, runs=runs, warmup=warmup, threads=threads,
                                  top=top, big_cores=big_cores, timeout_s=timeout_s, ep=ep)
    transport = transport_for(dev, python=python, ssh_config=ssh_config, remote_base=remote_base)
    task = _bundle_task(bundle, runs=runs, warmup=warmup, threads=threads, profile_runs=PROFILED_RUNS,
                        return_outputs=False)
    result, env = _run_bundle(bundle, transport, task, timeout_s)
    return profile_dict(bundle, dev, task, result, env, top, runner="device_runner.py")


def profile_dict(bundle: LoadedBundle, device: Device, task: dict[str, Any], result: dict[str, Any],
                 env: dict[str, Any], top: int, runner: str) -> dict[str, Any]:
    """The JSON every runner returns; its keys are a superset of the host profiler's (``edgec profile``)."""
    nodes = result.get("nodes", [])
    per_ep = collections.Counter(node["provider"] for node in nodes)
    return {
        "source": f"bundle {bundle.path} ({task['model']}) on {device}",
        "device": str(device), "runner": runner, "model_file": task["model"],
        "target": bundle.manifest["target"].get("name"),
        "runs": task["runs"], "warmup": task["warmup"], "threads": task["threads"], "level": task["level"],
        **result["latency_ms"],
        "top_nodes": nodes[:top], "nodes": nodes, "nodes_per_provider": dict(per_ep),
        "providers_requested": list(bundle.manifest["execution_providers"]),
        "providers_used": result.get("providers_used", []),
        "providers_missing": [p for p in bundle.manifest["execution_providers"]
                              if p not in env.get("available_providers", [p])],
        "environment": env,
    }


def verify_on_device(bundle_path: str | os.PathLike[str], device: str | Device, *, python: str | None = None,
                     ssh_config: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                     atol: float = SAMPLE_ATOL, rtol: float = SAMPLE_RTOL,
                     remote_base: str | None = None) -> DeviceVerifyReport:
    """Run the bundle's stored sample on ``device`` and compare with the outputs the host stored.

    An output passes when it is within ``atol`` absolute or ``rtol`` relative to its max |value|
    (different CPUs are not bit-exact: arm64 against x86 differs by about 1e-7 relative).
    """
    dev = as_device(device)
    if dev.kind == "adb":
        raise DeviceError(f"{dev}: verify on adb devices is not supported yet; run `edgec verify` with "
                          "an ssh or local device, or check numbers with scripts/arm64_check.sh")
    bundle = load_bundle(bundle_path)
    transport = transport_for(dev, python=python, ssh_config=ssh_config, remote_base=remote_base)
    task = _bundle_task(bundle, runs=0, warmup=0, threads=bundle.manifest["session_options"]
                        ["intra_op_num_threads"] or 1, profile_runs=0, return_outputs=True)
    result, env = _run_bundle(bundle, transport, task, timeout_s)
    got = {name: decode_array(text) for name, text in result["outputs"].items()}
    report = DeviceVerifyReport(bundle.path, str(bundle.manifest["target"].get("name")), task["model"],
                                device=str(dev), environment=env)
    report.checks += [VerifyCheck("files", True, "schema, paths and sha256 checked on the host"),
                      VerifyCheck("load", True, f"{task['model']} on {dev}: "
                                  f"{', '.join(result['providers_used'])}, onnxruntime "
                                  f"{env.get('onnxruntime_version')} on {env.get('machine')}")]
    report.sample_errors = _compare(bundle.sample_outputs, got)
    report.checks.append(_sample_check(report.sample_errors, atol, rtol, dev))
    log.info("verified %s on %s: %s", bundle.path, dev, "ok" if report.ok else "; ".join(report.problems))
    return report


def _compare(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list:
    missing = sorted(set(expected) - set(got))
    if missing:
        raise DeviceError(f"the device returned no output {missing[0]!r}")
    return compare_outputs([expected], [{name: got[name] for name in expected}])


def _sample_check(errors: list, atol: float, rtol: float, device: Device) -> VerifyCheck:
    bad = [e for e in errors if not (e.max_abs <= atol or e.max_rel <= rtol)]
    detail = "; ".join(f"{e.name}: max abs {e.max_abs:.3g}, max rel {e.max_rel:.3g}, cosine {e.cosine:.6f}"
                       for e in errors)
    return VerifyCheck(f"sample on {device} vs host", not bad, f"{detail} (allowed atol {atol:g} or rtol {rtol:g})")
