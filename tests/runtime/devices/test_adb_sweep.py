"""A latency sweep on an adb phone: staged micro-models, perf_test lines, parsed entries, and one-line errors.

No phone is attached here. The staged .ort files and their test data are run with ONNX Runtime on this host
(the files perf_test would read), their real profiler traces stand in for the phone's, and perf_test's
statistics come from tests/runtime/devices/data/perf_test_android.txt (a format sample, see its README).
The errors come from a real adb: one that is not installed, an adb server of the test's own that knows
no such serial, and a device it lists as offline (a TCP port that never answers adb's handshake).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgec.compiler.cli import cli
from edgec.compiler.search.latency_model import LatencyModel, model_features
from edgec.compiler.sweep_models import load_sweep_models
from edgec.models.zoo import get_zoo_model
from edgec.runtime.devices import DeviceError, export_device_file
from edgec.runtime.devices._microbench import collect_specs
from edgec.runtime.devices.adb import (
    WALL_KEYS,
    split_status,
    stage_sweep,
    status_line,
    sweep_commands,
    sweep_result,
)
from edgec.runtime.devices.device_runner import node_times
from edgec.runtime.devices.sweep import device_document, load_device_file, sweep_tasks
from edgec.runtime.session import make_session, session_options
from edgec.targets.registry import get_target

DATA = pathlib.Path(__file__).parent / "data"
REMOTE = "/data/local/tmp/edgec-sweep-0123456789ab"
ADB = pytest.mark.skipif(shutil.which("adb") is None, reason="adb is not installed (apt-get install adb)")


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """digits-cnn's sweep for android-arm64 (fp32, int8, fp16), staged as it is pushed to the phone."""
    target = get_target("android-arm64")
    specs = collect_specs(load_sweep_models(["digits-cnn"]), 2)
    tasks, inputs, files, meta, failed = sweep_tasks(specs, ["fp32", "int8", "fp16"], target, runs=7, warmup=1,
                                                     threads=2)
    root = tmp_path_factory.mktemp("adb") / "edgec-sweep-0123456789ab"
    models, refused = stage_sweep(root, tasks, files, inputs, target)
    return root, tasks, models, meta, failed + refused


def _feeds(folder: pathlib.Path) -> dict[str, np.ndarray]:
    tensors = [onnx.load_tensor(str(p)) for p in sorted((folder / "test_data_set_0").glob("input_*.pb"))]
    return {t.name: numpy_helper.to_array(t) for t in tensors}


def _host_trace(folder: pathlib.Path, runs: int = 5) -> list[dict]:
    """The staged model's ORT profile on this host, parsed as the phone's trace is."""
    options = session_options("extended", 2, profile_prefix=str(folder.parent / f"{folder.name}-trace"))
    session = ort.InferenceSession(str(folder / "model.ort"), options, providers=["CPUExecutionProvider"])
    feeds = _feeds(folder)
    for _ in range(runs + 1):
        session.run(None, feeds)
    trace = pathlib.Path(session.end_profiling())
    try:
        return node_times(json.loads(trace.read_text()))
    finally:
        trace.unlink()


def test_every_micro_model_is_staged_as_perf_test_reads_it(staged):
    root, tasks, models, meta, failed = staged
    assert not failed and len(tasks) >= 6 and set(models) == {t["id"] for t in tasks}
    assert {t["id"].rsplit("-", 1)[1] for t in tasks} == {"fp32", "int8", "fp16"}
    for task in tasks:
        folder = root / task["id"]
        assert sorted(p.name for p in folder.iterdir()) == ["model.ort", "test_data_set_0"]
        # The .ort and its inputs run: outputs of the shapes the device file records for the op.
        outputs = make_session(str(folder / "model.ort"), level="extended").run(None, _feeds(folder))
        assert [list(o.shape) for o in outputs] == meta[task["id"]]["output_shapes"]
        assert all(np.isfinite(o.astype(np.float32)).all() for o in outputs)


def test_perf_test_lines_for_each_micro_model(staged):
    _, tasks, models, _, _ = staged
    for task in tasks:
        timed, profiled = sweep_commands(REMOTE, "onnxruntime_perf_test", task, models[task["id"]], ep="nnapi",
                                         mask="c0")
        run = f"cd {REMOTE} && taskset c0 ./onnxruntime_perf_test -m times"
        common = "-e nnapi -x 2 -y 1 -o 2 -s"  # android-arm64: 2 threads, extended optimizations
        assert timed == f"{run} -r 7 {common} {task['id']}/model.ort"
        assert profiled == f"{run} -r 5 {common} -p {REMOTE}/{task['id']}/ort_profile {task['id']}/model.ort"
    unpinned, _ = sweep_commands(REMOTE, "perf test", tasks[0], "model.ort", ep="cpu")
    assert unpinned.startswith(f"cd {REMOTE} && './perf test' -m times -r 7 -e cpu ")


def test_perf_test_output_makes_entries_the_latency_model_reads(staged, tmp_path):
    root, tasks, models, meta, _ = staged
    text = (DATA / "perf_test_android.txt").read_text()
    traces = {t["id"]: _host_trace(root / t["id"]) for t in tasks}
    results = [sweep_result(t["id"], 0, text, traces[t["id"]]) for t in tasks]
    results[-1] = sweep_result(tasks[-1]["id"], 1, "Failed to load model because protobuf parsing failed.", [])
    raw = {"environment": {"system": "Android", "runner": "onnxruntime_perf_test"}, "results": results}
    doc = device_document("adb:R5CT1", get_target("android-arm64"), 2, raw, meta, [], ["digits-cnn"])
    path = tmp_path / "phone.json"
    path.write_text(json.dumps(doc))

    # The same entries as a local sweep of the same model: same keys, same wall_ms keys.
    local = export_device_file("local", tmp_path / "local.json", target="android-arm64",
                               models=load_sweep_models(["digits-cnn"]), max_per_op=2, runs=3, warmup=0)
    local_ok = next(e for e in local["entries"] if e["ok"])
    phone_ok = [e for e in doc["entries"] if e["ok"]]
    assert len(phone_ok) == len(tasks) - 1
    for entry in phone_ok:
        assert set(entry) == set(local_ok) and set(entry["wall_ms"]) == set(local_ok["wall_ms"]) == set(WALL_KEYS)
        assert entry["wall_ms"]["p50_ms"] == pytest.approx(8.86418) and entry["wall_ms"]["mean_ms"] == 9.03327
        assert entry["kernel_ms"] == pytest.approx(sum(n["total_ms"] for n in traces[_task_of(meta, entry)]))
    failed = doc["entries"][len(tasks) - 1]
    assert not failed["ok"] and failed["error"] == ("onnxruntime_perf_test exited with 1: Failed to load model "
                                                    "because protobuf parsing failed.")
    assert [e["key"] for e in doc["entries"]] == [meta[t["id"]]["key"] for t in tasks]

    # The latency model reads the phone's file and prices digits-cnn from it.
    model = LatencyModel(load_device_file(path))
    digits = onnx.load(str(get_zoo_model("digits-cnn").onnx_path()))
    prediction = model.predict(digits)
    convs = {f.op_class for f in model_features(digits) if f.op_class[0] == "Conv"}
    assert model.device == "adb:R5CT1" and convs <= set(model.fits)  # fitted from the phone's Conv entries
    assert prediction.total_ms > 0 and prediction.covered >= 0.5


def _task_of(meta: dict[str, dict], entry: dict) -> str:
    return next(task_id for task_id, info in meta.items() if info["key"] == entry["key"])


def test_perf_test_failures_stay_in_the_entry():
    no_stats = sweep_result("m000-fp32", 0, "Session creation time cost: 0.08 s\n", [{"provider": "CPU"}],
                            "adb:R5CT1")
    assert not no_stats["ok"] and no_stats["error"].startswith("adb:R5CT1: the runner printed no latency statistics")
    text = (DATA / "perf_test_android.txt").read_text()
    no_trace = sweep_result("m000-fp32", 0, text, [])
    assert no_trace == {"id": "m000-fp32", "ok": False, "error": "the runner wrote no profile trace: no kernel times"}


def test_status_line_keeps_perf_test_status_apart_from_adb(tmp_path):
    # The phone's shell is a POSIX sh too: the line runs here as it runs there.
    runner = tmp_path / "runner"
    runner.write_text("#!/bin/sh\necho 'Failed to load model'\necho 'more on stderr' >&2\nexit 3\n")
    runner.chmod(0o755)
    line = status_line(f"cd {tmp_path} && ./runner -r 7")
    text = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout
    assert split_status(text) == (3, "Failed to load model\nmore on stderr\n")
    ok = subprocess.run(["sh", "-c", status_line("echo P50 Latency: 0.001 s")], capture_output=True, text=True,
                        check=True).stdout
    assert split_status(ok) == (0, "P50 Latency: 0.001 s\n")
    assert split_status("no marker") == (-1, "no marker")


def _export(device: str, tmp_path: pathlib.Path, runner: str | None) -> DeviceError:
    out = tmp_path / "phone.json"
    with pytest.raises(DeviceError) as info:
        export_device_file(device, out, target="android-arm64", models=load_sweep_models(["digits-cnn"]),
                           runner=runner, timeout_s=30)
    assert not out.exists() and "\n" not in str(info.value) and info.value.exit_code == 2
    return info.value


@pytest.fixture
def runner_binary(tmp_path) -> str:
    path = tmp_path / "onnxruntime_perf_test"
    path.write_bytes(b"\x7fELF placeholder, never pushed")
    return str(path)


def test_no_runner_and_no_adb(tmp_path, runner_binary, monkeypatch):
    error = _export("adb:R5CT1", tmp_path, None)
    assert str(error).startswith("adb:R5CT1: adb devices need a runner binary: pass --runner")
    error = _export("adb:R5CT1", tmp_path, str(tmp_path / "missing" / "onnxruntime_perf_test"))
    assert "runner binary" in str(error) and "does not exist" in str(error)
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb on it
    error = _export("adb:R5CT1", tmp_path, runner_binary)
    assert str(error).startswith("adb:R5CT1: `adb` is not installed on this host")


@pytest.fixture
def adb_server(monkeypatch, unused_port):
    """An adb server of this test's own on a free port, killed afterwards (see test_adb.private_adb_server)."""
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(unused_port))
    server = subprocess.Popen(["adb", "-P", str(unused_port), "server", "nodaemon"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", unused_port)) == 0:
                break
        time.sleep(0.1)
    try:
        yield unused_port
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.fixture
def offline_serial(adb_server):
    """A serial the adb server lists as offline: a TCP port that accepts and never speaks adb."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    serial = f"127.0.0.1:{listener.getsockname()[1]}"
    # `adb connect` waits ~10 s for a handshake that never comes; the server lists the serial at once.
    connect = subprocess.Popen(["adb", "connect", serial], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=20, check=False).stdout
        if f"{serial}\toffline" in listed:
            break
        time.sleep(0.05)
    try:
        yield serial
    finally:
        connect.kill()
        connect.wait(timeout=10)
        listener.close()
        for conn in accepted:
            conn.close()


@ADB
def test_serial_not_attached(tmp_path, runner_binary, adb_server):
    error = str(_export("adb:edgec-no-such-phone", tmp_path, runner_binary))
    assert error.startswith("adb:edgec-no-such-phone: ")
    assert any(reason in error for reason in ("no such device", "no device attached", "timed out after"))


@ADB
def test_device_offline(tmp_path, runner_binary, offline_serial):
    error = str(_export(f"adb:{offline_serial}", tmp_path, runner_binary))
    assert error == f"adb:{offline_serial}: the device is offline; reconnect it or run `adb kill-server`"


@ADB
def test_profile_export_device_on_an_offline_phone_is_one_line(tmp_path, runner_binary, offline_serial,
                                                               android_bundle):
    out = tmp_path / "phone.json"
    result = CliRunner().invoke(cli, ["profile", str(android_bundle), "--device", f"adb:{offline_serial}",
                                      "--runner", runner_binary, "--export-device", str(out)])
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr.strip().splitlines() == [
        f"error: adb:{offline_serial}: the device is offline; reconnect it or run `adb kill-server`"]
