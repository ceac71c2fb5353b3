"""edgec's standalone device runner: times models with ONNX Runtime on the device and prints JSON.

It is copied, alone, to a temporary directory on the device together with the model files and a job
file, so it imports only the standard library, numpy and onnxruntime, and keeps to Python 3.8 syntax.

Usage: ``python3 device_runner.py job.json``. The job is
``{"deadline_s": float, "tasks": [{"id", "model", "inputs", "runs", "warmup", "threads", "level",
"providers", "profile_runs", "return_outputs"}]}``, where ``inputs`` names an ``.npz`` in the same
directory whose keys are ``<task id>/<input name>``. The last line printed is ``@@edgec-result@@`` and
one JSON document: ``{"environment": {...}, "results": [...]}``. A missing module or a failed job
prints ``@@edgec-error@@`` and a JSON ``{"kind", "detail"}`` instead and exits 3. After each task it
writes ``@@edgec-progress@@ DONE TOTAL`` to stderr, for a progress bar on the host.
"""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time

RESULT_MARK = "@@edgec-result@@"
ERROR_MARK = "@@edgec-error@@"
PROGRESS_MARK = "@@edgec-progress@@"  # on stderr after each task: "<mark> done total"
LEVEL_NAMES = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def fail(kind, detail, code=3):
    """Print one machine-readable error line and exit."""
    sys.stdout.write(ERROR_MARK + " " + json.dumps({"kind": kind, "detail": detail}) + "\n")
    sys.stdout.flush()
    sys.exit(code)


def import_runtime():
    """Import numpy and onnxruntime, or fail with a clear error naming what the device lacks."""
    missing = []
    modules = {}
    for name in ("numpy", "onnxruntime"):
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        fail("missing-module", f"device python {platform.python_version()} ({sys.executable}) lacks "
                               f"{', '.join(missing)}")
    return modules["numpy"], modules["onnxruntime"]


def read_text(path):
    """The stripped text of a file, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model():
    """The CPU's name from /proc/cpuinfo (x86 'model name', arm 'Hardware' or implementer/part)."""
    info = read_text("/proc/cpuinfo") or ""
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):
        return f"implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or platform.machine()


def governors():
    """The cpufreq scaling governor of each CPU, keyed by cpuN."""
    found = {}
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")):
        found[path.split("/")[5]] = read_text(path)
    return found


def temperatures():
    """Thermal zones in degrees Celsius, keyed by zone type (thermal_zoneN when types repeat)."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = read_text(os.path.join(zone, "temp"))
        if raw is None or not raw.lstrip("-").isdigit():
            continue
        name = read_text(os.path.join(zone, "type")) or os.path.basename(zone)
        temps[name if name not in temps else os.path.basename(zone)] = int(raw) / 1000.0
    return temps


def environment(np, ort):
    """The device facts reported with every result: versions, OS, CPU, board, governors, providers."""
    uname = platform.uname()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "onnxruntime_version": ort.__version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(), "system": uname.system, "release": uname.release,
        "machine": uname.machine, "hostname": uname.node, "cpu_model": cpu_model(),
        "board": (read_text("/sys/firmware/devicetree/base/model") or "").rstrip("\x00") or None,
        "cpu_count": os.cpu_count(), "usable_cpus": usable, "governor": governors(),
        "available_providers": ort.get_available_providers(),
    }


def session(ort, path, task, profile_prefix=None):
    """An ORT session on ``path`` with the task's options and providers (CPU last), profiling when asked."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVEL_NAMES[task["level"]])
    opts.intra_op_num_threads = int(task["threads"])
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    available = set(ort.get_available_providers())
    wanted = [p for p in task.get("providers", []) if p in available and p != "CPUExecutionProvider"]
    return ort.InferenceSession(path, opts, providers=wanted + ["CPUExecutionProvider"])


def latencies(np, sess, feeds, runs, warmup):
    """Time ``runs`` runs after ``warmup`` untimed ones; percentiles, mean, min and max in milliseconds."""
    for _ in range(warmup):
        sess.run(None, feeds)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times[i] = (time.perf_counter() - start) * 1e3
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(times.mean()),
            "min_ms": float(times.min()), "max_ms": float(times.max())}


def node_times(events):
    """Per-node kernel time (mean per run), EP and shapes from ORT's trace; the first run is dropped."""
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_end = run_events[0]["ts"] + run_events[0]["dur"] if len(run_events) > 1 else -1
    runs = max(1, len(run_events) - (1 if first_end >= 0 else 0))
    nodes = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e.get("ts", 0) <= first_end:
            continue
        args = e.get("args", {})
        key = name[: -len("_kernel_time")]
        node = nodes.setdefault(key, {"name": key, "op_type": args.get("op_name", "?"),
                                      "provider": args.get("provider", "?"), "total_us": 0.0,
                                      "input_type_shape": args.get("input_type_shape"),
                                      "output_type_shape": args.get("output_type_shape")})
        node["total_us"] += float(e.get("dur", 0))
    grand = sum(n["total_us"] for n in nodes.values()) or 1.0
    out = []
    for node in sorted(nodes.values(), key=lambda n: n["total_us"], reverse=True):
        total = node.pop("total_us")
        node["total_ms"] = total / 1e3 / runs
        node["share"] = total / grand
        out.append(node)
    return out


def profile_nodes(ort, path, task, feeds, work):
    """Per-node times from an ORT profile of the task's model (``profile_runs`` runs after one dropped)."""
    trace_dir = tempfile.mkdtemp(prefix="trace-", dir=work)
    try:
        sess = session(ort, path, task, profile_prefix=os.path.join(trace_dir, "ort"))
        for _ in range(int(task.get("profile_runs", 10)) + 1):
            sess.run(None, feeds)
        with open(sess.end_profiling(), encoding="utf-8") as f:
            return node_times(json.load(f))
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def encode(np, array):
    """An array as base64 of its .npy bytes (C order, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.require(array, requirements="C"), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def run_task(np, ort, task, arrays, work):
    """Run one task of the job: its outputs, latencies and node profile as asked; a JSON-ready dict."""
    path = os.path.join(work, task["model"])
    prefix = task["id"] + "/"
    feeds = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    sess = session(ort, path, task)
    result = {"id": task["id"], "ok": True, "providers_used": sess.get_providers()}
    if task.get("return_outputs"):
        names = [o.name for o in sess.get_outputs()]
        values = sess.run(names, feeds)
        # zip(strict=) is Python 3.10+, and devices may have 3.8.
        result["outputs"] = {n: encode(np, v) for n, v in zip(names, values)}  # noqa: B905
    if int(task.get("runs", 0)) > 0:
        result["latency_ms"] = latencies(np, sess, feeds, int(task["runs"]), int(task.get("warmup", 0)))
    if int(task.get("profile_runs", 0)) > 0:
        result["nodes"] = profile_nodes(ort, path, task, feeds, work)
    return result


def on_deadline(signum, frame):
    """SIGALRM handler: report the deadline error and exit 124."""
    fail("deadline", "the device runner passed its deadline and stopped", code=124)


def main(argv):
    """Run every task of the job file ``argv[1]`` and print one result line with the environment."""
    if len(argv) != 2:
        fail("usage", "usage: device_runner.py job.json", code=2)
    work = os.path.dirname(os.path.abspath(argv[1]))
    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    if hasattr(signal, "SIGALRM") and job.get("deadline_s"):
        signal.signal(signal.SIGALRM, on_deadline)
        signal.alarm(max(1, int(job["deadline_s"])))
    np, ort = import_runtime()
    env = environment(np, ort)
    env["temperatures_c_before"] = temperatures()
    results = []
    for task in job["tasks"]:
        arrays = {}
        if task.get("inputs"):
            with np.load(os.path.join(work, task["inputs"]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files if k.startswith(task["id"] + "/")}
        try:
            results.append(run_task(np, ort, task, arrays, work))
        except Exception as exc:  # one bad micro-model must not lose the others' numbers
            results.append({"id": task["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        sys.stderr.write(f"{PROGRESS_MARK} {len(results)} {len(job['tasks'])}\n")
        sys.stderr.flush()
    env["temperatures_c_after"] = temperatures()
    sys.stdout.write(RESULT_MARK + " " + json.dumps({"environment": env, "results": results}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
