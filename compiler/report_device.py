"""The report page's device section: figures and parity from runs on a device.

A bundle's manifest holds no device run (the bundle is checksummed, and runs happen after the build), so
the runs come from the ``--json`` output of ``edgec profile BUNDLE --device ...`` (latency, per-node times and
EPs on the device, and the device's facts) and ``edgec verify BUNDLE --device ...`` (the stored sample rerun
there against the host's outputs), passed to ``edgec report --device-run``. The manifest adds one thing: a
search that priced its candidates from a device file says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgec.compiler.report_html import (
    Html,
    as_dict,
    as_list,
    bar,
    facts,
    join,
    none_line,
    num,
    para,
    plain,
    short_ep,
    table,
    tag,
)

_ENV_KEYS = ("machine", "cpu_model", "board", "system", "release", "cpu_count", "onnxruntime_version",
             "python_version")


def _environment(env: dict[str, Any]) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {env[key]}" for key in _ENV_KEYS if env.get(key) not in (None, ""))


def _mismatch(run: Mapping[str, Any], m: dict[str, Any]) -> list[Html]:
    target = as_dict(m.get("target")).get("name")
    if run.get("target") in (None, target):
        return []
    return [para(f"This run is for target {run.get('target')}, not this bundle's {target}: another bundle's run?",
                 class_="bad")]


def _profile(run: Mapping[str, Any], m: dict[str, Any]) -> Html:
    host = as_dict(as_dict(m.get("metrics")).get("host_latency_ms")).get("after")
    vs_host = (f"; {plain(run['p50_ms'] / host, '.2f')}x this bundle's median on the build host "
               f"({plain(host, '.4g')} ms)" if isinstance(host, float) and host > 0 and isinstance(
                   run.get("p50_ms"), float) else "")
    per_ep = ", ".join(f"{ep} {n}" for ep, n in as_dict(run.get("nodes_per_provider")).items())
    missing = as_list(run.get("providers_missing"))
    nodes = [as_dict(n) for n in as_list(run.get("top_nodes"))]
    rows = [(n.get("name"), n.get("op_type"), short_ep(n.get("provider")), num(n.get("total_ms"), ".4f"),
             bar(n.get("share"))) for n in nodes]
    return join([tag("h3", f"Profile on {run.get('device')}"), *_mismatch(run, m), facts([
        ("run", f"{run.get('source')}, {run.get('runner')}; {run.get('runs')} runs after {run.get('warmup')} "
                f"warm-up, {run.get('threads')} thread(s), level {run.get('level')}"),
        ("latency", f"p50 {plain(run.get('p50_ms'), '.4g')} ms, p90 {plain(run.get('p90_ms'), '.4g')} ms, "
                    f"p99 {plain(run.get('p99_ms'), '.4g')} ms{vs_host}"),
        ("execution providers", f"requested {', '.join(map(str, as_list(run.get('providers_requested'))))}; "
                                f"used {', '.join(map(str, as_list(run.get('providers_used'))))}"),
        ("nodes per EP", per_ep or "–"),
        ("device", _environment(as_dict(run.get("environment"))) or "–"),
    ]), *([para(f"Not on the device: {', '.join(map(str, missing))}: their nodes ran on the CPU EP.",
                class_="warn")] if missing else []),
        table(("node", "op", "EP", "ms / run", "share"), rows, numeric=(3,), caption="slowest nodes on the device")])


def _verify(run: Mapping[str, Any], m: dict[str, Any]) -> Html:
    checks = [as_dict(c) for c in as_list(run.get("checks"))]
    ok = bool(checks) and all(c.get("ok") is True for c in checks)
    errors = [as_dict(e) for e in as_list(run.get("sample_errors"))]
    return join([tag("h3", f"Parity on {run.get('device')}"), *_mismatch(run, m),
                 para("The stored sample rerun on the device matches the host's outputs." if ok else
                      "The device run does not match the host's outputs (see the failed checks).",
                      class_="good" if ok else "bad"),
                 table(("check", "result", "detail"),
                       [(c.get("name"), "ok" if c.get("ok") is True else "FAIL", c.get("detail")) for c in checks]),
                 table(("output", "max abs error", "max rel error", "cosine"),
                       [(e.get("name"), num(e.get("max_abs"), ".2e"), num(e.get("max_rel"), ".2e"),
                         num(e.get("cosine"), ".6f")) for e in errors], numeric=(1, 2, 3),
                       caption="device outputs vs the host's stored outputs (sample.npz)"),
                 facts([("device", _environment(as_dict(run.get("environment"))) or "–")])])


def _priced_by_device(m: dict[str, Any]) -> list[Html]:
    search = as_dict(as_dict(m.get("metrics")).get("search"))
    predicted_by = as_dict(as_dict(search.get("chosen")).get("latency_ms")).get("predicted_by")
    if not predicted_by or "device" not in str(predicted_by):
        return []
    return [para(f"The search priced its candidates for a device: {predicted_by} (see the search section).")]


def device_section(m: dict[str, Any], runs: Sequence[Mapping[str, Any]]) -> Html:
    """Each device run given (profile figures, parity checks), or one line saying there was none."""
    parts = _priced_by_device(m)
    if not runs:
        parts.append(none_line("No device run: this report was made without one (edgec profile or verify BUNDLE "
                               "--device ... --json > run.json, then edgec report BUNDLE --device-run run.json)."))
    for run in runs:
        parts.append(_verify(run, m) if "checks" in run else _profile(run, m))
    return join(parts)
