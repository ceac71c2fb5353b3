"""Where a bundle runs: this host, an ssh host or an adb serial, parsed from the --device text."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from edgec.core.errors import ConfigError, EdgecError


class DeviceError(EdgecError):
    """A device cannot be reached or cannot run the bundle; the message names the device and the fix."""


_SSH = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                  r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>\d{1,5}))?$")
_SERIAL = re.compile(r"^[A-Za-z0-9._:-]+$")


@dataclasses.dataclass(frozen=True)
class Device:
    """Where a bundle runs: this host, an ssh host (Linux board) or an adb serial (Android phone)."""

    kind: Literal["local", "ssh", "adb"]
    host: str = ""
    user: str | None = None
    port: int | None = None
    serial: str = ""

    def __str__(self) -> str:
        if self.kind == "ssh":
            user = f"{self.user}@" if self.user else ""
            port = f":{self.port}" if self.port else ""
            return f"ssh:{user}{self.host}{port}"
        return f"adb:{self.serial}" if self.kind == "adb" else "local"

    @property
    def ssh_destination(self) -> str:
        """``user@host`` as ssh takes it (brackets of an IPv6 literal removed)."""
        host = self.host.strip("[]")
        return f"{self.user}@{host}" if self.user else host


def parse_device(text: str) -> Device:
    """``local``, ``ssh:[USER@]HOST[:PORT]`` or ``adb:SERIAL``; anything else is a ConfigError naming --device."""
    spec = (text or "").strip()
    if spec == "local":
        return Device("local")
    kind, _, rest = spec.partition(":")
    if kind == "ssh":
        match = _SSH.match(rest)
        port = int(match["port"]) if match and match["port"] else None
        if match and (port is None or 0 < port < 65536):
            return Device("ssh", host=match["host"], user=match["user"], port=port)
        raise ConfigError(f"--device {text!r}: expected ssh:USER@HOST[:PORT], e.g. ssh:pi@192.168.1.20:22")
    if kind == "adb":
        if _SERIAL.match(rest):
            return Device("adb", serial=rest)
        raise ConfigError(f"--device {text!r}: expected adb:SERIAL (the serial `adb devices` lists)")
    raise ConfigError(f"--device {text!r}: expected local, ssh:USER@HOST[:PORT] or adb:SERIAL")
