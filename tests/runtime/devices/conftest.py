"""A real sshd on 127.0.0.1 with keys made for the run, and small bundles, for the device tests."""

from __future__ import annotations

import dataclasses
import getpass
import os
import pathlib
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from edgec.runtime.bundle import write_bundle
from edgec.targets.registry import get_target

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


@dataclasses.dataclass(frozen=True)
class SshServer:
    """How the tests reach the loopback sshd."""

    port: int
    user: str
    config: pathlib.Path  # an ssh_config with the run's key and known_hosts
    root: pathlib.Path

    @property
    def device(self) -> str:
        return f"ssh:{self.user}@127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: pathlib.Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgec-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def write_client_config(path: pathlib.Path, key: pathlib.Path, known_hosts: pathlib.Path) -> pathlib.Path:
    path.write_text(f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
                    "  StrictHostKeyChecking yes\n  PasswordAuthentication no\n  LogLevel ERROR\n")
    return path


def _sshd_config(root: pathlib.Path, port: int, host_key: pathlib.Path) -> pathlib.Path:
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n")
    return config


def _wait_listening(port: int, proc: subprocess.Popen, log: pathlib.Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd exited at start: {log.read_text()[-300:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.skip("sshd did not start listening within 10 s")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """sshd -D on a free loopback port; the test user logs in with a key made for this run."""
    if SSHD is None or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("openssh-server is not installed (apt-get install -y openssh-server)")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    root = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(root / "host_key")
    (root / "authorized_keys").write_text(_keygen(root / "client_key") + "\n")
    port = free_port()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    log = root / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(_sshd_config(root, port, root / "host_key")),
                             "-E", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, log)
        config = write_client_config(root / "ssh_config", root / "client_key", root / "known_hosts")
        yield SshServer(port, getpass.getuser(), config, root)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


@pytest.fixture
def client_config_for():
    """Write an ssh_config that logs in with ``key`` and trusts ``known_hosts``."""
    return write_client_config


@pytest.fixture(scope="session")
def android_bundle(tmp_path_factory, tiny_model) -> pathlib.Path:
    """A tiny android-arm64 bundle of tests/runtime's classifier: model.ort shipped, model.onnx beside it."""
    feeds = {"input.1": np.random.default_rng(7).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    out = tmp_path_factory.mktemp("devbundle") / "bundle"
    return write_bundle(out, model=tiny_model, target=get_target("android-arm64"), sample_inputs=feeds)
