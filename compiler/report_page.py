"""``edgec report``: one self-contained HTML page per bundle, from its manifest (and any device runs given).

The page (``OUT.report.html`` next to the bundle, like ``OUT.pareto.png``) has a section each for: the model
card, the passes, where the time goes per node, why the model is not faster, the sensitivity ranking and
per-layer choices, the search, and device runs. A section that does not apply says so in one line. It loads
nothing from elsewhere: styles inline, charts as data: URIs, no scripts, and a policy that forbids fetches.
The manifest is untrusted: every value is escaped, and a section whose figures are malformed says so
instead of stopping the page.

This module assembles the page and holds the pass, per-node time, why-not-faster and sensitivity sections;
``report_card``, ``report_search`` and ``report_device`` hold the others, ``report_html`` the escaping HTML
builders and ``report_charts`` the charts. ``node_times`` records the per-node times at build time.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgec.compiler import report_charts
from edgec.compiler.report_card import model_card
from edgec.compiler.report_device import device_section
from edgec.compiler.report_html import (
    Html,
    as_dict,
    as_list,
    bar,
    chart,
    details,
    document,
    facts,
    human,
    is_number,
    join,
    none_line,
    num,
    para,
    plain,
    short_ep,
    table,
    tag,
)
from edgec.compiler.report_search import search_section
from edgec.core.errors import ConfigError

log = logging.getLogger(__name__)

PAGE_SUFFIX = ".report.html"
# Stats keys another section shows; the pass table's details leave them out.
_SHOWN_ELSEWHERE = ("why_not_faster", "sensitivity", "precision_of")


def page_path(bundle: str | os.PathLike[str]) -> Path:
    """Where a build writes the page: next to the bundle, named after it (``OUT.report.html``)."""
    out = Path(bundle)
    return out.with_name(out.name + PAGE_SUFFIX)


# ---- passes --------------------------------------------------------------------------------------------


def _arrow(record: dict[str, Any], key: str) -> Html:
    return join([human(as_dict(record.get("before")).get(key)), " → ", human(as_dict(record.get("after")).get(key))])


def _pass_details(record: dict[str, Any]) -> Html:
    """What the pass left alone and why (shown), and the figures it recorded (raw JSON, folded)."""
    skips = [as_dict(s) for s in as_list(record.get("skips"))]
    stats = {k: v for k, v in as_dict(record.get("stats")).items() if k not in _SHOWN_ELSEWHERE}
    parts = []
    if skips:
        lines = [f"{s.get('where')}: {s.get('reason')}" for s in skips[:30]]
        more = [f"... and {len(skips) - 30} more"] if len(skips) > 30 else []
        parts.append(details(f"{record.get('name')} left {len(skips)} part(s) alone",
                             tag("ul", join(tag("li", line) for line in [*lines, *more]))))
    if stats:
        dumped = json.dumps(stats, indent=1, default=str)
        parts.append(details(f"{record.get('name')}: {len(stats)} figure(s) recorded (JSON)",
                             tag("pre", dumped if len(dumped) < 4000 else dumped[:4000] + "\n..."), is_open=False))
    return join(parts)


def passes_section(m: dict[str, Any]) -> Html:
    """One row per pass: what it changed, how long it took, and the output error it caused."""
    records = [as_dict(r) for r in as_list(m.get("passes"))]
    if not records:
        return none_line("No pass ran on this model.")
    rows = []
    for r in records:
        errors = "; ".join(f"{as_dict(e).get('name')}: cos {plain(as_dict(e).get('cosine'), '.6f')}"
                           for e in as_list(r.get("errors")))
        rows.append((r.get("name"), "yes" if r.get("modified") else "no", _arrow(r, "nodes"), _arrow(r, "params"),
                     _arrow(r, "flops"), _arrow(r, "bytes"), num(r.get("wall_s"), ".2f"),
                     num(r.get("max_rel_error"), ".1e"), num(r.get("min_cosine"), ".6f"), errors))
    headers = ("pass", "changed", "nodes", "params", "FLOPs", "bytes", "time s", "max rel err", "min cosine",
               "per output")
    intro = para("Each pass runs on a copy of the previous model and must match its outputs on the calibration "
                 "samples within the tolerance it declares; the errors are against the model before the pass.")
    return join([intro, table(headers, rows, numeric=(6, 7, 8)), *(_pass_details(r) for r in records)])


# ---- where the time goes ---------------------------------------------------------------------------------


def _time_side(side: dict[str, Any], title: str) -> Html:
    providers = ", ".join(f"{short_ep(ep)} {share:.0%}" for ep, share in as_dict(side.get("by_provider")).items()
                          if is_number(share))
    nodes = [as_dict(n) for n in as_list(side.get("nodes"))]
    ops = [as_dict(o) for o in as_list(side.get("by_op"))]
    node_rows = [(n.get("name"), n.get("op_type"), short_ep(n.get("provider")), num(n.get("total_ms"), ".4f"),
                  bar(n.get("share"))) for n in nodes]
    op_rows = [(o.get("op_type"), o.get("nodes"), num(o.get("total_ms"), ".4f"), bar(o.get("share"))) for o in ops]
    return join([tag("h3", title),
                 facts([("kernel time per run", num(side.get("kernel_ms"), ".4g", " ms")),
                        ("nodes timed", side.get("nodes_timed")), ("time per EP", providers or "–")]),
                 table(("node", "op", "EP", "ms / run", "share"), node_rows, numeric=(3,),
                       caption=f"slowest {len(node_rows)} nodes"),
                 table(("op type", "nodes", "ms / run", "share"), op_rows, numeric=(1, 2), caption="by op type")])


def node_times_section(m: dict[str, Any]) -> Html:
    """The slowest nodes and op types of the original and of the final model, with the EP of each."""
    times = as_dict(m.get("metrics")).get("node_times")
    if times is None:
        return none_line("Not recorded: this bundle's build did not profile its nodes (metrics.node_times is "
                         "absent: a build before per-node times were recorded, or one without calibration data).")
    times = as_dict(times)
    if times.get("error"):
        return none_line(f"Not measured: the per-node profile failed: {times['error']}")
    host, wanted = as_list(times.get("providers")), as_list(times.get("target_providers"))
    missing = [ep for ep in wanted if ep not in host]
    intro = [f"ONNX Runtime's profiler on {times.get('measured_on', 'this host')}: {times.get('profiled_runs')} runs "
             f"of each model after a warm-up, optimization level {times.get('level')}, {times.get('threads')} "
             f"thread(s), providers {', '.join(map(str, host))}. "]
    if missing:
        intro.append(f"The target's {', '.join(map(str, missing))} are not in this host's onnxruntime: the nodes "
                     "they would run ran on the CPU here (see the device section for the device's own figures). ")
    intro.append("Node names and op types are ORT's after its graph optimizations (fused nodes take the name of "
                 "their first node).")
    sides = [Html(f"<div>{_time_side(as_dict(times.get(key)), title)}</div>")
             for key, title in (("before", "Before (the original)"), ("after", "After (this bundle)"))]
    return join([para(*intro), Html(f'<div class="grid">{"".join(sides)}</div>')])


# ---- why is it not faster --------------------------------------------------------------------------------

_KINDS = {
    "unfused-qdq": ("Quantize/Dequantize nodes ORT could not fold into an int8 kernel", "the data converts "
                    "between int8 and float here, and the op between them runs in float"),
    "slow-fallback": ("integer kernels without a fused rescale", "ConvInteger/MatMulInteger, often slower than the "
                      "float op they replace"),
    "layout": ("layout changes ORT inserted", "Transpose/Reorder nodes between int8 (NHWC) and float (NCHW, "
               "NCHWc) kernels, each a copy of the tensor"),
}


def _profiled_share(findings: list[dict[str, Any]], op_share: dict[str, float]) -> list[Html]:
    """One line: how much of the bundle's kernel time the findings' op types take in the per-node profile."""
    timed = [(op, op_share[op]) for op in sorted({str(f.get("op_type")) for f in findings}) if op in op_share]
    if not timed:
        return []
    listed = ", ".join(f"{op} {share:.0%}" for op, share in sorted(timed, key=lambda t: -t[1]))
    lines = [tag("li", f"In the per-node profile of this bundle (where the time goes, above), these op types take "
                       f"{sum(s for _, s in timed):.0%} of the kernel time: {listed}.")]
    top_op, top_share = max(op_share.items(), key=lambda kv: kv[1])
    if top_op not in dict(timed):
        lines.append(tag("li", f"The largest op type there is {top_op} ({top_share:.0%} of the kernel time), "
                               "which no finding names: that time is the kernels' own work, not conversions."))
    return lines


def _why_record(name: Any, why: dict[str, Any], stats: dict[str, Any], op_share: dict[str, float]) -> Html:
    counts = {k: v for k, v in as_dict(why.get("counts")).items() if is_number(v)}
    findings = [as_dict(f) for f in as_list(why.get("findings"))]
    if not counts:
        return para(f"{name}: ORT's optimized graph runs int8 end to end: no float island, fallback or added "
                    "layout change.", class_="good")
    items = [tag("li", join([tag("b", f"{n} {_KINDS.get(k, (k, ''))[0]}"),
                             f": {_KINDS[k][1]}." if k in _KINDS else ""])) for k, n in counts.items()]
    # A Dequantize feeding a graph output is the model's float output, not a float island.
    float_ops = {op: n for op, n in as_dict(why.get("float_ops_between_qdq")).items() if op != "graph output"}
    if float_ops:
        ops = ", ".join(f"{op} ×{n}" for op, n in float_ops.items())
        items.append(tag("li", f"Ops left in float between Dequantize and Quantize: {ops}. Rewriting or fusing "
                               "them (or keeping their neighbours float) removes the conversions."))
    ratio = as_dict(stats.get("placement_latency_ratio"))
    if ratio:
        items.append(tag("li", "Latency of the int8 placements tried, relative to float: " + ", ".join(
            f"{k} {plain(v, '.2f')}x" for k, v in ratio.items()) + f"; chosen: {stats.get('placement', '?')}."))
    items += _profiled_share(findings, op_share)
    rows = [(f.get("node"), f.get("op_type"), f.get("kind"), f.get("detail")) for f in findings]
    listed = table(("node (ORT's optimized graph)", "op", "kind", "what it does"), rows,
                   caption=f"the first {len(rows)} findings")
    return join([tag("h3", name), para(f"Why {name}'s model is not as fast as a fully int8 graph would be:"),
                 tag("ul", join(items)), listed])


def why_section(m: dict[str, Any]) -> Html:
    """The "why isn't it faster" findings each quantizing pass recorded, in words."""
    after = as_dict(as_dict(as_dict(m.get("metrics")).get("node_times")).get("after"))
    op_share = {str(o.get("op_type")): float(o["share"]) for o in map(as_dict, as_list(after.get("by_op")))
                if is_number(o.get("share"))}
    parts = []
    for record in (as_dict(r) for r in as_list(m.get("passes"))):
        stats = as_dict(record.get("stats"))
        if "why_not_faster" in stats:
            parts.append(_why_record(record.get("name"), as_dict(stats["why_not_faster"]), stats, op_share))
    if not parts:
        profile = as_dict(as_dict(m.get("target")).get("profile"))
        why = (f" It reads this host's ORT CPU graph, so it runs only for targets this host can time, and "
               f"{profile.get('name')} is not one." if profile.get("host_measurable") is False else "")
        return none_line("No pass of this build analysed what keeps the model from being faster (int8 "
                         f"quantization records it: which nodes ORT left in float, fell back or re-laid out).{why}")
    return join(parts)


# ---- sensitivity and per-layer choices -------------------------------------------------------------------


def _ranking(name: Any, ranked: list[dict[str, Any]]) -> Html:
    pairs = [(str(r.get("node")), float(r["error"])) for r in ranked if is_number(r.get("error"))]
    top = ", ".join(f"{n} ({e:.2g})" for n, e in pairs[:5])
    return join([tag("h3", f"{name}: sensitivity ranking"),
                 para(f"Output error with only that node quantized, most sensitive first ({len(pairs)} nodes "
                      f"ranked): {top}."),
                 chart(lambda: report_charts.ranking_chart(pairs, f"{name}: output error with one node quantized"),
                       f"{name} sensitivity ranking")])


def _precisions(name: Any, precision_of: dict[str, Any]) -> Html:
    counts: dict[str, int] = {}
    for fmt in precision_of.values():
        counts[str(fmt)] = counts.get(str(fmt), 0) + 1
    summary = ", ".join(f"{fmt} ×{n}" for fmt, n in counts.items())
    return join([tag("h3", f"{name}: precision per node"), para(f"{len(precision_of)} nodes: {summary}."),
                 chart(lambda: report_charts.precision_chart(precision_of, f"{name}: precision per node"),
                       f"{name} precision per node")])


def _layers(layers: dict[str, Any]) -> Html:
    rows = [as_dict(r) for r in as_list(layers.get("chosen"))]
    table_rows = [(r.get("layer"), r.get("width"), r.get("kept"), num(r.get("ratio"), ".3g")) for r in rows]
    return join([tag("h3", "Search: channels per layer of the chosen model"),
                 para(f"{layers.get('evaluated')} per-layer candidates tried ({layers.get('knob')})."),
                 chart(lambda: report_charts.layers_chart(rows, "channels per layer"), "channels per layer"),
                 table(("layer", "width", "kept", "pruned ratio"), table_rows, numeric=(1, 2, 3))])


def sensitivity_section(m: dict[str, Any]) -> Html:
    """Sensitivity rankings and per-node precisions the passes recorded, and the search's per-layer widths."""
    parts = []
    for record in (as_dict(r) for r in as_list(m.get("passes"))):
        stats = as_dict(record.get("stats"))
        ranked = [as_dict(r) for r in as_list(stats.get("sensitivity"))]
        if ranked:
            parts.append(_ranking(record.get("name"), ranked))
        if as_dict(stats.get("precision_of")):
            parts.append(_precisions(record.get("name"), stats["precision_of"]))
    layers = as_dict(as_dict(as_dict(m.get("metrics")).get("search")).get("layers"))
    if as_list(layers.get("chosen")):
        parts.append(_layers(layers))
    if not parts:
        return none_line("No per-node or per-layer choice in this build: no pass ranked its nodes by sensitivity "
                         "(lossy passes do under --max-drop) and no search refined per-layer widths.")
    return join(parts)


# ---- the page ----------------------------------------------------------------------------------------------

_Section = Callable[[dict[str, Any]], Html]


def _sections(device_runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, _Section]]:
    return [("model-card", "Model card", model_card), ("passes", "Passes", passes_section),
            ("node-times", "Where the time goes", node_times_section),
            ("why-not-faster", "Why isn't it faster", why_section),
            ("sensitivity", "Sensitivity and per-layer choices", sensitivity_section),
            ("search", "Search", search_section),
            ("device", "Device runs", lambda m: device_section(m, device_runs))]


def _guarded(build: _Section, manifest: dict[str, Any]) -> Html:
    """A section, or one line saying its figures in the manifest are malformed."""
    try:
        return build(manifest)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return none_line(f"This section's figures in the manifest are malformed ({type(exc).__name__}: {exc}).")


def render_page(manifest: dict[str, Any], name: str, device_runs: Sequence[Mapping[str, Any]] = ()) -> str:
    """The report page of the bundle ``name`` as one HTML document."""
    target = as_dict(manifest.get("target")).get("name", "?")
    sections = [(ident, title, _guarded(build, manifest)) for ident, title, build in _sections(device_runs)]
    subtitle = f"target {target}; {len(as_list(manifest.get('passes')))} passes; built {manifest.get('created')}"
    footer = (f"edgec report of {name}: made from its manifest.json by edgec {manifest.get('edgec_version')}; "
              "self-contained (no scripts, no network).")
    return document(f"edgec report: {name} ({target})", subtitle, sections, footer)


def read_device_runs(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """The JSON of ``edgec profile/verify BUNDLE --device ... --json`` runs, one per file."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--device-run {path}: cannot read it as JSON ({exc})") from exc
        if not isinstance(data, dict) or not ({"p50_ms", "checks"} & data.keys()):
            raise ConfigError(f"--device-run {path}: not the --json output of edgec profile or verify --device")
        runs.append(data)
    return runs


def write_page(bundle: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
               device_runs: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Check the bundle (schema, paths, checksums), render its page and write it atomically; its path.

    ``out`` defaults to ``page_path(bundle)``. Raises BundleError for a bundle that does not load.
    """
    from edgec.runtime.loader import load_bundle

    source = Path(bundle)
    manifest = load_bundle(source).manifest
    page = render_page(manifest, source.name, device_runs)
    target = Path(out) if out is not None else page_path(source)
    if not target.parent.is_dir():
        raise ConfigError(f"-o {target}: no such folder {target.parent}")
    if target.is_dir():
        raise ConfigError(f"-o {target}: is a folder; name the page's file")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
