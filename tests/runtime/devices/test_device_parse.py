"""--device strings: the three forms, and malformed ones refused with --device named."""

from __future__ import annotations

import pytest

from edgec.core.errors import ConfigError
from edgec.runtime.devices import Device, parse_device


@pytest.mark.parametrize(("text", "expected"), [
    ("local", Device("local")),
    ("ssh:pi@192.168.1.20", Device("ssh", host="192.168.1.20", user="pi")),
    ("ssh:ubuntu@orin.lan:2222", Device("ssh", host="orin.lan", user="ubuntu", port=2222)),
    ("ssh:jetson", Device("ssh", host="jetson")),
    ("ssh:root@[::1]:22", Device("ssh", host="[::1]", user="root", port=22)),
    ("adb:R5CT1234ABC", Device("adb", serial="R5CT1234ABC")),
    ("adb:192.168.1.30:5555", Device("adb", serial="192.168.1.30:5555")),
])
def test_parse_device(text, expected):
    device = parse_device(text)
    assert device == expected and str(device) == text


def test_ssh_destination_strips_ipv6_brackets():
    assert parse_device("ssh:root@[::1]:22").ssh_destination == "root@::1"


@pytest.mark.parametrize("text", ["", "pi@host", "ssh:", "ssh:pi@", "ssh:pi@host:0", "ssh:pi@host:99999",
                                  "ssh:pi@host:22:1", "ssh:-oProxyCommand=x", "adb:", "adb:a b", "usb:1"])
def test_malformed_device_names_the_option(text):
    with pytest.raises(ConfigError) as info:
        parse_device(text)
    assert str(info.value).startswith("--device ") and info.value.exit_code == 2


def test_runner_command_quotes_but_lets_the_device_expand_home():
    from edgec.runtime.devices._jobs import cleanup_command, runner_command

    line = runner_command("/tmp/edgec-ab12", "~/my venv/bin/python")
    assert line == "cd /tmp/edgec-ab12 && echo $$ > runner.pid && exec ~/my venv/bin/python device_runner.py job.json"
    assert "'/a b/python;rm'" in runner_command("/tmp/edgec-1", "'/a b/python;rm'")
    with pytest.raises(ValueError, match="not an edgec job directory"):
        cleanup_command("/home/user")
