"""The adb device (Android): push the .ort model and the user's onnxruntime_perf_test, run it, parse it.

Phones rarely have Python, so the runner is a binary the user built (``--runner``): ORT's
``onnxruntime_perf_test`` for Android arm64. It reads the bundle's sample inputs from
``test_data_set_0/input_N.pb`` next to the model, prints percentiles (``-s``) and writes ORT's
profiler trace (``-p``), which is parsed with the same code as device_runner.py. A latency sweep
(``edgec profile --export-device``) runs each micro-model the same way (``sweep_on_adb``) and returns what
device_runner.py returns for a job, so the device file has the same entries as a local or ssh sweep.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.core import progress
from edgec.runtime.devices.device import Device, DeviceError
from edgec.runtime.devices.device_runner import node_times
from edgec.runtime.loader import LoadedBundle
from edgec.runtime.mobile import convert_to_ort, ort_style_for
from edgec.targets.profile import TargetProfile

log = logging.getLogger(__name__)

REMOTE_BASE = "/data/local/tmp"
ADB_TIMEOUT_S = 60.0
PROFILED_RUNS = 10
# onnxruntime_perf_test's -o takes GraphOptimizationLevel's numeric values.
OPT_LEVEL_FLAG = {"disabled": "0", "basic": "1", "extended": "2", "all": "99"}
EP_FLAG = {"NnapiExecutionProvider": "nnapi", "XnnpackExecutionProvider": "xnnpack",
           "CPUExecutionProvider": "cpu", "QNNExecutionProvider": "qnn", "CoreMLExecutionProvider": "coreml"}
_ADB_FAILURES = (
    ("not found", "no such device; check the serial with `adb devices` and the USB cable"),
    ("no devices", "no device attached; connect the phone and enable USB debugging"),
    ("unauthorized", "the phone has not authorized this computer; accept the prompt on the phone"),
    ("offline", "the device is offline; reconnect it or run `adb kill-server`"),
)
EXIT_MARK = "@@edgec-exit="  # appended to a sweep's shell lines: perf_test's exit status, apart from adb's own
WALL_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")  # a device file's wall_ms
_STAT = re.compile(r"^(Min|Max|P50|P90|P95|P99|P999) Latency:\s*([0-9.eE+-]+)\s*s\s*$", re.M)
_FIELDS = {
    "session_creation_ms": (r"Session creation time cost:\s*([0-9.eE+-]+)\s*s", 1e3),
    "first_inference_ms": (r"First inference time cost:\s*([0-9.eE+-]+)\s*ms", 1.0),
    "mean_ms": (r"Average inference time cost:\s*([0-9.eE+-]+)\s*ms", 1.0),
    "runs": (r"Total inference requests:\s*(\d+)", None),
    "inferences_per_s": (r"Number of inferences per second:\s*([0-9.eE+-]+)", 1.0),
    "avg_cpu_usage_pct": (r"Avg CPU usage:\s*([0-9.eE+-]+)\s*%", 1.0),
    "peak_working_set_bytes": (r"Peak working set size:\s*(\d+)\s*bytes", None),
}


def parse_perf_test_output(text: str, device: Device | str = "adb") -> dict[str, Any]:
    """Latency figures (ms) from onnxruntime_perf_test's stdout; needs its statistics block (``-s``)."""
    stats = {name.lower(): float(value) * 1e3 for name, value in _STAT.findall(text)}
    if "p50" not in stats:
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"{device}: the runner printed no latency statistics (is it onnxruntime_perf_test, "
                          f"run with -s?): {last}")
    out: dict[str, Any] = {f"{key}_ms": value for key, value in stats.items()}
    for key, (pattern, scale) in _FIELDS.items():
        match = re.search(pattern, text)
        if match:
            out[key] = int(match[1]) if scale is None else float(match[1]) * scale
    return out


def big_core_mask(max_freq_khz: dict[int, int]) -> tuple[list[int], str]:
    """The cores with the highest max frequency and their taskset hex mask (big.LITTLE's big cluster)."""
    if not max_freq_khz:
        return [], ""
    top = max(max_freq_khz.values())
    cores = sorted(cpu for cpu, freq in max_freq_khz.items() if freq == top)
    return cores, format(sum(1 << cpu for cpu in cores), "x")


def parse_sysfs_listing(text: str, pattern: str) -> dict[str, str]:
    """``path value`` lines (from a shell loop over sysfs) into {regex group 1: value}."""
    found = {}
    for line in text.splitlines():
        path, _, value = line.strip().partition(" ")
        match = re.search(pattern, path)
        if match and value:
            found[match[1]] = value.strip()
    return found


class AdbTransport:
    """adb commands for one serial; failures become one-line DeviceErrors."""

    def __init__(self, device: Device) -> None:
        if shutil.which("adb") is None:
            raise DeviceError(f"{device}: `adb` is not installed on this host; install Android's platform "
                              "tools (apt-get install adb)")
        self.device = device

    def adb(self, *args: str, timeout_s: float = ADB_TIMEOUT_S) -> str:
        """Run ``adb -s <serial> args`` and return its stdout; DeviceError with advice when it fails."""
        argv = ["adb", "-s", self.device.serial, *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{self.device}: timed out after {timeout_s:.0f} s running `adb {args[0]}`; "
                              "check the phone is awake and connected, or raise --timeout") from exc
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or "no message").splitlines()[-1]
            for fragment, advice in _ADB_FAILURES:
                if fragment in message.lower():
                    raise DeviceError(f"{self.device}: {advice}")
            raise DeviceError(f"{self.device}: `adb {args[0]}` failed: {message}")
        return proc.stdout

    def shell(self, command: str, timeout_s: float = ADB_TIMEOUT_S) -> str:
        """Run a shell command on the device and return its stdout."""
        return self.adb("shell", command, timeout_s=timeout_s)

    def facts(self) -> dict[str, Any]:
        """Model, SoC, ABI, governors, big cores and temperatures, as far as the shell user can read them."""
        props = {key: self.shell(f"getprop {key}").strip() for key in
                 ("ro.product.model", "ro.soc.model", "ro.board.platform", "ro.build.version.release",
                  "ro.product.cpu.abi")}
        freqs = parse_sysfs_listing(self.shell(
            "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do echo $f $(cat $f); done"
            " 2>/dev/null"), r"cpu(\d+)/cpufreq")
        govs = parse_sysfs_listing(self.shell(
            "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do echo $f $(cat $f); done"
            " 2>/dev/null"), r"(cpu\d+)/cpufreq")
        cores, mask = big_core_mask({int(k): int(v) for k, v in freqs.items() if v.isdigit()})
        return {"cpu_model": props["ro.soc.model"] or props["ro.board.platform"], "board": props["ro.product.model"],
                "android_version": props["ro.build.version.release"], "machine": props["ro.product.cpu.abi"],
                "system": "Android", "governor": govs, "big_cores": cores, "taskset_mask": mask,
                "cpu_max_freq_khz": freqs}

    def temperatures(self) -> dict[str, float]:
        """Thermal zones in degrees Celsius, keyed by zone type."""
        text = self.shell("for z in /sys/class/thermal/thermal_zone*; do echo $(cat $z/type) $(cat $z/temp); "
                          "done 2>/dev/null")
        temps = {}
        for line in text.splitlines():
            name, _, raw = line.strip().rpartition(" ")
            if name and raw.lstrip("-").isdigit():
                temps[name] = int(raw) / 1000.0
        return temps


def _stage(bundle: LoadedBundle, runner: pathlib.Path, staging: pathlib.Path) -> str:
    """model/<model file> + model/test_data_set_0/input_N.pb (the layout perf_test reads) + the runner."""
    bundle.check_tensor_io("onnxruntime_perf_test runs", outputs=False)
    model_file = pathlib.PurePosixPath(bundle.manifest["model_file"]).name
    (staging / "model").mkdir(parents=True)
    (staging / "model" / model_file).write_bytes(bundle.model_bytes())
    names = [spec["name"] for spec in bundle.manifest["inputs"]]
    _write_test_data(staging / "model", [(name, bundle.sample_inputs[name]) for name in names])
    shutil.copyfile(runner, staging / runner.name)
    return model_file


def _write_test_data(model_dir: pathlib.Path, feeds: Sequence[tuple[str, np.ndarray]]) -> None:
    """``test_data_set_0/input_N.pb`` in the model's input order: the layout perf_test reads."""
    data_dir = model_dir / "test_data_set_0"
    data_dir.mkdir(parents=True)
    for i, (name, array) in enumerate(feeds):
        (data_dir / f"input_{i}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())


def perf_test_command(remote: str, runner: str, model_file: str, *, runs: int, threads: int, level: str,
                      ep: str, mask: str = "", profile: str = "", model_dir: str = "model") -> str:
    """The shell line that runs onnxruntime_perf_test on the phone (pinned with taskset when ``mask``).

    perf_test reads its inputs from ``test_data_set_0`` next to the model, so each model has a folder
    (``model_dir``, relative to ``remote``).
    """
    argv = [f"./{runner}", "-m", "times", "-r", str(runs), "-e", ep, "-x", str(threads), "-y", "1",
            "-o", OPT_LEVEL_FLAG[level], "-s"]
    if profile:
        argv += ["-p", profile]
    argv.append(f"{model_dir}/{model_file}")
    pin = f"taskset {mask} " if mask else ""
    return f"cd {shlex.quote(remote)} && {pin}" + " ".join(shlex.quote(a) for a in argv)


def _check_runner(device: Device, runner: str | None) -> pathlib.Path:
    if not runner:
        raise DeviceError(f"{device}: adb devices need a runner binary: pass --runner PATH to "
                          "onnxruntime_perf_test built for Android (see docs/devices.md)")
    path = pathlib.Path(runner)
    if not path.is_file():
        raise DeviceError(f"{device}: runner binary {runner} does not exist; build onnxruntime_perf_test "
                          "for Android (see docs/devices.md) and pass its path with --runner")
    return path


def profile_bundle_adb(bundle: LoadedBundle, device: Device, *, runner: str | None, runs: int, warmup: int,
                       threads: int, top: int, big_cores: bool, timeout_s: float,
                       ep: str | None = None) -> dict[str, Any]:
    """Warm up, time ``runs`` runs, then profile a few, all with the user's perf_test; same JSON as ssh."""
    from edgec.runtime.devices.api import profile_dict

    runner_path = _check_runner(device, runner)
    adb = AdbTransport(device)
    adb.adb("get-state")
    env = adb.facts()
    level = bundle.manifest["session_options"]["graph_optimization_level"]
    ep_flag = ep or next((EP_FLAG[p] for p in bundle.manifest["execution_providers"] if p in EP_FLAG), "cpu")
    mask = env["taskset_mask"] if big_cores else ""
    remote = f"{REMOTE_BASE}/edgec-{uuid.uuid4().hex[:12]}"
    staging = pathlib.Path(tempfile.mkdtemp(prefix="edgec-stage-"))
    try:
        model_file = _stage(bundle, runner_path, staging)
        adb.shell(f"mkdir -p {remote}")
        for item in sorted(staging.iterdir()):
            adb.adb("push", str(item), f"{remote}/", timeout_s=timeout_s)
        adb.shell(f"chmod 755 {remote}/{shlex.quote(runner_path.name)}")
        common = {"threads": threads, "level": level, "ep": ep_flag, "mask": mask}
        env["temperatures_c_before"] = adb.temperatures()
        if warmup:
            adb.shell(perf_test_command(remote, runner_path.name, model_file, runs=warmup, **common), timeout_s)
        latency = parse_perf_test_output(adb.shell(perf_test_command(
            remote, runner_path.name, model_file, runs=runs, **common), timeout_s), device)
        env["temperatures_c_after"] = adb.temperatures()
        adb.shell(perf_test_command(remote, runner_path.name, model_file, runs=PROFILED_RUNS,
                                    profile=f"{remote}/ort_profile", **common), timeout_s)
        nodes = _pull_trace(adb, remote, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _cleanup(adb, remote)
    task = {"model": model_file, "runs": runs, "warmup": warmup, "threads": threads, "level": level}
    result = {"latency_ms": latency, "nodes": nodes,
              "providers_used": sorted({n["provider"] for n in nodes}) or [ep_flag]}
    return profile_dict(bundle, device, task, result, env, top, runner=runner_path.name)


def _pull_trace(adb: AdbTransport, remote: str, staging: pathlib.Path) -> list[dict[str, Any]]:
    """ORT writes <prefix>_<timestamp>.json; pull the newest and aggregate it per node."""
    names = [n for n in adb.shell(f"ls {remote}").split() if n.startswith("ort_profile") and n.endswith(".json")]
    if not names:
        log.warning("%s: the runner wrote no profile trace; per-node times are missing", adb.device)
        return []
    local = staging / "trace.json"
    adb.adb("pull", f"{remote}/{sorted(names)[-1]}", str(local))
    return node_times(json.loads(local.read_text(encoding="utf-8")))


def _cleanup(adb: AdbTransport, remote: str) -> None:
    try:
        adb.shell(f"rm -rf {shlex.quote(remote)}")
    except DeviceError as exc:
        log.warning("could not remove %s on %s: %s", remote, adb.device, exc)


def open_adb(device: Device, runner: str | None) -> tuple[AdbTransport, pathlib.Path]:
    """The runner, adb and the phone checked before a sweep builds anything: (adb transport, runner path)."""
    runner_path = _check_runner(device, runner)
    adb = AdbTransport(device)
    adb.adb("get-state")
    return adb, runner_path


def stage_sweep(root: pathlib.Path, tasks: Sequence[dict[str, Any]], files: Mapping[str, bytes],
                inputs: Mapping[str, np.ndarray], target: TargetProfile) -> tuple[dict[str, str], list[dict]]:
    """Each sweep task's model in the target's format and its inputs, in ``root/<task id>/``.

    Returns {task id: model file} and the failed tasks' results (a micro-model the .ort converter refuses
    is a fact for the device file, as a build failure is).
    """
    staged, failed = {}, []
    for task in tasks:
        folder = root / task["id"]
        folder.mkdir(parents=True)
        model = onnx.load_from_string(files[task["model"]])
        feeds = [(i.name, inputs[f"{task['id']}/{i.name}"]) for i in model.graph.input
                 if f"{task['id']}/{i.name}" in inputs]
        try:
            if target.model_format == "ort":
                source = folder / "model.onnx"
                source.write_bytes(files[task["model"]])
                convert_to_ort(source, folder, target, ort_style_for(model, target))
                source.unlink()
                (folder / "required_operators.config").unlink()
            else:
                (folder / "model.onnx").write_bytes(files[task["model"]])
        except Exception as exc:  # recorded in the device file, as a micro-model that cannot be built is
            shutil.rmtree(folder, ignore_errors=True)
            failed.append({"id": task["id"], "ok": False, "error": f"ort conversion: {type(exc).__name__}: {exc}"})
            continue
        _write_test_data(folder, feeds)
        staged[task["id"]] = "model.ort" if target.model_format == "ort" else "model.onnx"
    return staged, failed


def sweep_commands(remote: str, runner: str, task: dict[str, Any], model_file: str, *, ep: str,
                   mask: str = "") -> tuple[str, str]:
    """The timed and the profiled perf_test lines of one sweep task (its runs, threads and level)."""
    common = {"threads": int(task["threads"]), "level": task["level"], "ep": ep, "mask": mask,
              "model_dir": task["id"]}
    timed = perf_test_command(remote, runner, model_file, runs=int(task["runs"]), **common)
    profiled = perf_test_command(remote, runner, model_file, runs=int(task["profile_runs"]),
                                 profile=f"{remote}/{task['id']}/ort_profile", **common)
    return timed, profiled


def sweep_result(task_id: str, status: int, output: str, nodes: Sequence[dict[str, Any]],
                 device: Device | str = "adb") -> dict[str, Any]:
    """One task's result as device_runner.py reports it, from perf_test's exit status, stdout and trace."""
    if status != 0:
        last = (output.strip().splitlines() or ["no output"])[-1]
        return {"id": task_id, "ok": False, "error": f"onnxruntime_perf_test exited with {status}: {last}"}
    try:
        stats = parse_perf_test_output(output, device)
    except DeviceError as exc:
        return {"id": task_id, "ok": False, "error": str(exc)}
    if not nodes:
        return {"id": task_id, "ok": False, "error": "the runner wrote no profile trace: no kernel times"}
    return {"id": task_id, "ok": True, "latency_ms": {k: stats[k] for k in WALL_KEYS if k in stats},
            "nodes": list(nodes), "providers_used": sorted({n["provider"] for n in nodes})}


def status_line(command: str) -> str:
    """``command`` with its output and exit status on stdout: a failed perf_test is not a failed adb."""
    return f"{command} 2>&1; echo {EXIT_MARK}$?"


def split_status(text: str) -> tuple[int, str]:
    """(exit status, output) from a ``status_line``'s stdout; -1 when the status is missing."""
    head, mark, status = text.rpartition(EXIT_MARK)
    code = status.strip()
    return (int(code), head) if mark and code.lstrip("-").isdigit() else (-1, text)


def _status_shell(adb: AdbTransport, command: str, timeout_s: float) -> tuple[int, str]:
    """(exit status, output) of a command on the phone; only adb's own failures raise."""
    return split_status(adb.shell(status_line(command), timeout_s))


def sweep_on_adb(adb: AdbTransport, runner_path: pathlib.Path, tasks: Sequence[dict[str, Any]],
                 files: Mapping[str, bytes], inputs: Mapping[str, np.ndarray], target: TargetProfile, *,
                 warmup: int, big_cores: bool, timeout_s: float) -> dict[str, Any]:
    """Run a sweep's micro-models with the user's perf_test: {"environment", "results"} as device_runner.py.

    One push of every model; then per task a timed run and a profiled run, whose trace gives the kernel
    times. ``warmup`` untimed runs of the first model go first, so the big cores are at speed.
    """
    deadline = time.monotonic() + timeout_s
    env = adb.facts()
    env["runner"] = runner_path.name
    mask = env["taskset_mask"] if big_cores else ""
    ep = next((EP_FLAG[p] for p in target.ep_names if p in EP_FLAG), "cpu")
    name = f"edgec-sweep-{uuid.uuid4().hex[:12]}"
    remote = f"{REMOTE_BASE}/{name}"
    staging = pathlib.Path(tempfile.mkdtemp(prefix="edgec-stage-"))
    try:
        staged, results = stage_sweep(staging / name, tasks, files, inputs, target)
        shutil.copyfile(runner_path, staging / name / runner_path.name)
        adb.adb("push", str(staging / name), f"{REMOTE_BASE}/", timeout_s=_left(adb, deadline, timeout_s))
        adb.shell(f"chmod 755 {remote}/{shlex.quote(runner_path.name)}")
        env["temperatures_c_before"] = adb.temperatures()
        planned = [(t, *sweep_commands(remote, runner_path.name, t, staged[t["id"]], ep=ep, mask=mask))
                   for t in tasks if t["id"] in staged]
        if warmup and planned:
            first = planned[0][0]
            warm, _ = sweep_commands(remote, runner_path.name, {**first, "runs": warmup}, staged[first["id"]],
                                     ep=ep, mask=mask)
            _status_shell(adb, warm, _left(adb, deadline, timeout_s))
        for task, timed, profiled in progress.track(planned, f"device sweep: timing micro-models on {adb.device}"):
            status, output = _status_shell(adb, timed, _left(adb, deadline, timeout_s))
            nodes: list[dict[str, Any]] = []
            if status == 0 and _status_shell(adb, profiled, _left(adb, deadline, timeout_s))[0] == 0:
                nodes = _pull_trace(adb, f"{remote}/{task['id']}", staging)
            results.append(sweep_result(task["id"], status, output, nodes, adb.device))
        env["temperatures_c_after"] = adb.temperatures()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _cleanup(adb, remote)
    return {"environment": env, "results": results}


def _left(adb: AdbTransport, deadline: float, timeout_s: float) -> float:
    """Seconds left of the sweep's ``timeout_s``; past it, the one-line timeout error."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeviceError(f"{adb.device}: timed out after {timeout_s:.0f} s running the latency sweep; "
                          "raise --timeout")
    return left
