"""The ssh runner against a real loopback sshd: profile, verify, and each failure leaves the device clean."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgec.core.errors import EdgecError
from edgec.runtime.devices import DeviceError, profile_on_device, verify_on_device
from edgec.runtime.loader import load_bundle
from edgec.runtime.session import make_session, run

# The "device" is this host, so the device's python is the test's own interpreter.
PY = sys.executable


@pytest.fixture
def device_tmp(tmp_path):
    """Where the runner's job dirs go on the device; every test checks it is empty afterwards."""
    path = tmp_path / "device-tmp"
    path.mkdir()
    return path


def _ssh(sshd, device_tmp, **kwargs):
    return {"python": PY, "ssh_config": str(sshd.config), "remote_base": str(device_tmp), **kwargs}


def test_profile_through_sshd(sshd, android_bundle, device_tmp):
    result = profile_on_device(android_bundle, sshd.device, runs=30, warmup=3, threads=1,
                               **_ssh(sshd, device_tmp))
    assert result["device"] == sshd.device and result["model_file"] == "model.ort"
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["runs"] == 30 and result["threads"] == 1 and result["level"] == "extended"
    # Every node ORT ran appears once, with the EP it ran on; the shares add up to the whole.
    ops = {node["op_type"] for node in result["nodes"]}
    assert {"Softmax", "GlobalAveragePool"} <= ops and ops & {"Conv", "FusedConv"}
    assert result["nodes_per_provider"] == {"CPUExecutionProvider": len(result["nodes"])}
    assert sum(node["share"] for node in result["nodes"]) == pytest.approx(1.0)
    assert result["providers_used"] == ["CPUExecutionProvider"]
    assert result["providers_missing"] == ["NnapiExecutionProvider", "XnnpackExecutionProvider"]
    env = result["environment"]
    assert env["onnxruntime_version"] == ort.__version__ and env["cpu_model"] and env["cpu_count"] >= 1
    assert isinstance(env["governor"], dict) and isinstance(env["temperatures_c_before"], dict)
    assert list(device_tmp.iterdir()) == []


def test_verify_through_sshd(sshd, android_bundle, device_tmp):
    report = verify_on_device(android_bundle, sshd.device, **_ssh(sshd, device_tmp))
    assert report.ok, report.problems
    assert report.device == sshd.device and report.model_file == "model.ort"
    # Same machine, same ORT: the device reproduces the stored sample exactly (allow a hair).
    (error,) = report.sample_errors
    assert error.name == "probs" and error.max_abs <= 1e-6 and error.cosine > 0.999999
    assert list(device_tmp.iterdir()) == []


def test_verify_through_sshd_detects_drift(sshd, android_bundle, device_tmp):
    """With a zero tolerance and a perturbed expectation, the device check must fail (not vacuous)."""
    bundle = load_bundle(android_bundle)
    expected = run(make_session(android_bundle / "model.ort", level="extended"), bundle.sample_inputs)
    np.testing.assert_array_equal(expected["probs"], bundle.sample_outputs["probs"])
    report = verify_on_device(android_bundle, sshd.device, atol=-1.0, rtol=-1.0, **_ssh(sshd, device_tmp))
    assert not report.ok and "probs" in report.problems[0]


def _one_line(exc: EdgecError, device: str) -> str:
    message = str(exc)
    assert "\n" not in message and message.startswith(device) and exc.exit_code == 2
    return message


def test_connection_refused(android_bundle, device_tmp, unused_port):
    device = f"ssh:nobody@127.0.0.1:{unused_port}"
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, device, runs=1, python=PY, remote_base=str(device_tmp))
    assert "connection refused" in _one_line(info.value, device)


def test_authentication_failure(sshd, android_bundle, device_tmp, tmp_path, client_config_for):
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    config = client_config_for(tmp_path / "ssh_config", stranger, sshd.root / "known_hosts")
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, sshd.device, runs=1, python=PY, ssh_config=str(config),
                          remote_base=str(device_tmp))
    message = _one_line(info.value, sshd.device)
    assert "authentication failed" in message and "ssh-copy-id" in message
    assert list(device_tmp.iterdir()) == []


def test_device_without_onnxruntime(sshd, android_bundle, device_tmp):
    # -S drops site-packages: the device's python then has neither numpy nor onnxruntime.
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, sshd.device, runs=1, **_ssh(sshd, device_tmp, python=f"{PY} -S"))
    message = _one_line(info.value, sshd.device)
    assert "lacks numpy, onnxruntime" in message and "--device-python" in message
    assert list(device_tmp.iterdir()) == []


def test_device_without_python(sshd, android_bundle, device_tmp):
    with pytest.raises(DeviceError) as info:
        verify_on_device(android_bundle, sshd.device, **_ssh(sshd, device_tmp, python="/nonexistent/python3"))
    assert "cannot run python '/nonexistent/python3'" in _one_line(info.value, sshd.device)
    assert list(device_tmp.iterdir()) == []


def test_timeout_stops_the_runner_and_cleans_up(sshd, android_bundle, device_tmp):
    with pytest.raises(DeviceError) as info:
        profile_on_device(android_bundle, sshd.device, runs=10**8, warmup=0, timeout_s=2,
                          **_ssh(sshd, device_tmp))
    assert "timed out" in _one_line(info.value, sshd.device)
    assert list(device_tmp.iterdir()) == []


def test_tampered_bundle_never_leaves_the_host(sshd, android_bundle, device_tmp, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(android_bundle, copy)
    (copy / "model.ort").write_bytes(b"not a model")
    with pytest.raises(EdgecError, match="sha256"):
        profile_on_device(copy, sshd.device, runs=1, **_ssh(sshd, device_tmp))
    assert list(device_tmp.iterdir()) == []
