"""edgec.runtime.devices: profile and verify bundles on real devices (local, ssh boards, adb phones)."""

from __future__ import annotations

from edgec.runtime.devices.api import profile_on_device, verify_on_device
from edgec.runtime.devices.device import Device, DeviceError, parse_device
from edgec.runtime.devices.sweep import export_device_file

__all__ = ["Device", "DeviceError", "export_device_file", "parse_device", "profile_on_device",
           "verify_on_device"]
