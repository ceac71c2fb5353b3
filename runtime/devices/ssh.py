"""The ssh device (Linux boards): OpenSSH's ssh and scp with the user's ssh config, never a password prompt."""

from __future__ import annotations

import logging
import os
import pathlib
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from edgec.runtime.devices._jobs import REMOTE_PREFIX, OnProgress, cleanup_command, run_command, timed_out
from edgec.runtime.devices.device import Device, DeviceError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
COPY_TIMEOUT_S = 300.0
# stderr fragments of OpenSSH and what the user should do about each.
_FAILURES = (
    ("Connection refused", "connection refused; is sshd running on {host} port {port}?"),
    ("Permission denied", "authentication failed for {dest}; edgec runs ssh in BatchMode (no password "
                          "prompts): install your key on the device (ssh-copy-id {dest}) or set IdentityFile "
                          "in ~/.ssh/config"),
    ("Too many authentication failures", "authentication failed for {dest}; set IdentityFile and "
                                         "IdentitiesOnly yes for this host in ~/.ssh/config"),
    ("Host key verification failed", "host key unknown or changed; run `ssh {dest}` once to check and "
                                     "accept it"),
    ("Could not resolve hostname", "unknown host {host}; check the name or add it to ~/.ssh/config"),
    ("timed out", "connection timed out; check the address, the network and that the device is on"),
    ("No route to host", "no route to host {host}; check the address and the network"),
    ("Network is unreachable", "network unreachable for {host}; check the address and the network"),
)


class SshTransport:
    """Runs jobs on ``ssh:USER@HOST[:PORT]`` with ssh/scp, BatchMode and a connect timeout."""

    def __init__(self, device: Device, python: str | None = None, ssh_config: str | None = None,
                 remote_base: str | None = None, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> None:
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise DeviceError(f"{device}: `{tool}` is not installed on this host; install OpenSSH's "
                                  "client (apt-get install openssh-client)")
        self.device = device
        self.python = python or "python3"
        self.ssh_config = ssh_config or os.environ.get("EDGEC_SSH_CONFIG") or None
        self.remote_base = remote_base
        self.connect_timeout_s = connect_timeout_s

    def _options(self, port_flag: str) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.ssh_config:
            opts += ["-F", self.ssh_config]
        if self.device.port:
            opts += [port_flag, str(self.device.port)]
        return opts

    def _call(self, argv: list[str], timeout_s: float, what: str,
              on_progress: OnProgress | None = None) -> subprocess.CompletedProcess[str]:
        try:
            proc = run_command(argv, timeout_s, on_progress)
        except subprocess.TimeoutExpired as exc:
            raise timed_out(self.device, timeout_s, what) from exc
        if proc.returncode == 255 or (argv[0] == "scp" and proc.returncode != 0):
            self._raise_connection_error(proc.stderr, what)
        return proc

    def _raise_connection_error(self, stderr: str, what: str) -> None:
        port = self.device.port or 22
        for fragment, advice in _FAILURES:
            if fragment in stderr:
                raise DeviceError(f"{self.device}: " + advice.format(host=self.device.host, port=port,
                                                                       dest=self.device.ssh_destination))
        last = (stderr.strip().splitlines() or ["no message"])[-1]
        raise DeviceError(f"{self.device}: ssh failed while {what}: {last}")

    def execute(self, command: str, timeout_s: float,
                on_progress: OnProgress | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the device's login shell."""
        argv = ["ssh", *self._options("-p"), self.device.ssh_destination, "--", command]
        return self._call(argv, timeout_s, "running a command", on_progress)

    def make_dir(self) -> str:
        """``mktemp -d`` under ``remote_base`` (default ``$TMPDIR`` or /tmp) on the device."""
        template = (shlex.quote(f"{self.remote_base}/{REMOTE_PREFIX}XXXXXX") if self.remote_base
                    else f'"${{TMPDIR:-/tmp}}/{REMOTE_PREFIX}XXXXXX"')
        proc = self.execute(f"mktemp -d {template}", CONNECT_TIMEOUT_S + 30.0)
        path = proc.stdout.strip()
        if proc.returncode != 0 or not path.startswith("/"):
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise DeviceError(f"{self.device}: cannot make a temporary directory on the device: {last}")
        return path

    def push(self, files: Sequence[pathlib.Path], remote_dir: str) -> None:
        """Copy the files into ``remote_dir`` with scp."""
        dest = f"{self.device.user}@{self.device.host}" if self.device.user else self.device.host
        argv = ["scp", "-q", *self._options("-P"), *map(str, files), f"{dest}:{remote_dir}/"]
        self._call(argv, COPY_TIMEOUT_S, "copying the bundle")

    def remove(self, remote_dir: str) -> None:
        """Best effort: a failed cleanup is logged, never raised over the real error."""
        try:
            self.execute(cleanup_command(remote_dir), CONNECT_TIMEOUT_S + 30.0)
        except DeviceError as exc:
            log.warning("could not remove %s on %s: %s", remote_dir, self.device, exc)
