"""The adb runner: perf_test output parsing, command lines, core pinning, and its one-line errors."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

from edgec.runtime.devices import DeviceError, profile_on_device
from edgec.runtime.devices.adb import big_core_mask, parse_perf_test_output, parse_sysfs_listing, perf_test_command

DATA = pathlib.Path(__file__).parent / "data"
SERIAL = os.environ.get("EDGEC_ADB_SERIAL")
RUNNER = os.environ.get("EDGEC_ADB_RUNNER")


def test_parse_perf_test_output():
    stats = parse_perf_test_output((DATA / "perf_test_android.txt").read_text())
    assert stats["p50_ms"] == pytest.approx(8.86418)
    assert stats["p90_ms"] == pytest.approx(9.49237)
    assert stats["p99_ms"] == pytest.approx(11.8414)
    assert stats["min_ms"] == pytest.approx(8.51962) and stats["max_ms"] == pytest.approx(12.7631)
    assert stats["mean_ms"] == pytest.approx(9.03327) and stats["runs"] == 100
    assert stats["session_creation_ms"] == pytest.approx(87.4513)
    assert stats["peak_working_set_bytes"] == 41263104 and stats["avg_cpu_usage_pct"] == 24
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def test_parse_output_without_statistics_names_the_device():
    text = "Session creation time cost: 0.08 s\nthere is no test data for model model\n"
    with pytest.raises(DeviceError, match=r"^adb:R5CT1: .*no latency statistics.*no test data"):
        parse_perf_test_output(text, "adb:R5CT1")


def test_big_core_mask_picks_the_fastest_cluster():
    # A Tensor G2 layout: 4 little cores at 1.8 GHz, 2 medium at 2.35 GHz, 2 big at 2.85 GHz.
    listing = "\n".join(f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq {f}"
                        for i, f in enumerate([1803000] * 4 + [2348000] * 2 + [2850000] * 2))
    freqs = {int(k): int(v) for k, v in parse_sysfs_listing(listing, r"cpu(\d+)/cpufreq").items()}
    assert big_core_mask(freqs) == ([6, 7], "c0")
    assert big_core_mask({}) == ([], "")


def test_perf_test_command_line():
    line = perf_test_command("/data/local/tmp/edgec-1", "onnxruntime_perf_test", "model.ort", runs=50,
                             threads=2, level="extended", ep="nnapi", mask="c0", profile="/data/local/tmp/edgec-1/p")
    assert line == ("cd /data/local/tmp/edgec-1 && taskset c0 ./onnxruntime_perf_test -m times -r 50 -e nnapi "
                    "-x 2 -y 1 -o 2 -s -p /data/local/tmp/edgec-1/p model/model.ort")


def test_runner_missing(android_bundle):
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, "adb:R5CT1", runs=5)
    assert str(info.value).startswith("adb:R5CT1: adb devices need a runner binary: pass --runner")
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, "adb:R5CT1", runs=5, runner="/nonexistent/onnxruntime_perf_test")
    message = str(info.value)
    assert "runner binary /nonexistent/onnxruntime_perf_test does not exist" in message and "\n" not in message
    assert info.value.exit_code == 2


@pytest.fixture
def private_adb_server(monkeypatch, unused_port):
    """An adb server of this test's own on a free port, killed afterwards.

    The test owns the process instead of asking `adb kill-server` to stop it: on some CI hosts the
    server never answers kill-server (it is still probing USB), and a daemon must not outlive the test.
    """
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(unused_port))
    server = subprocess.Popen(["adb", "-P", str(unused_port), "server", "nodaemon"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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


@pytest.mark.skipif(shutil.which("adb") is None, reason="adb is not installed (apt-get install adb)")
def test_serial_not_attached(android_bundle, tmp_path, private_adb_server):
    runner = tmp_path / "onnxruntime_perf_test"
    runner.write_bytes(b"\x7fELF placeholder, never pushed")
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, "adb:edgec-no-such-phone", runs=5, runner=str(runner), timeout_s=30)
    message = str(info.value)
    assert message.startswith("adb:edgec-no-such-phone: ") and "\n" not in message
    # A host whose adb server hangs on USB probing gives the timeout line instead; both name the device.
    assert any(reason in message for reason in ("no such device", "no device attached", "timed out after 30 s"))


@pytest.mark.skipif(not (SERIAL and RUNNER), reason="no Android phone here: set EDGEC_ADB_SERIAL and "
                    "EDGEC_ADB_RUNNER (an Android build of onnxruntime_perf_test) to run on one")
def test_profile_on_phone(android_bundle):
    result = profile_on_device(android_bundle, f"adb:{SERIAL}", runs=20, warmup=5, runner=RUNNER)
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["nodes"] and result["environment"]["system"] == "Android"
