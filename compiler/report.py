"""How CLI results look: rich tables for people, plain dicts for --json."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Task as ProgressTask
from rich.table import Table
from rich.text import Text

from edgec.compiler.report_page import page_path
from edgec.core import progress as core_progress
from edgec.targets.profile import TargetProfile


@contextlib.contextmanager
def progress(console: Console, enabled: bool) -> Iterator[Callable[[str], None]]:
    """Bars for counted work (``edgec.core.progress`` tasks: count, elapsed, ETA) under a spinner line for the phase.

    Yields the callback that sets the phase line. Nothing is drawn, and the callback does nothing, when
    disabled (``--quiet``, ``--json``) or when the console's file is not a terminal (a pipe, a CI log).
    """
    isatty = getattr(console.file, "isatty", None)
    if not enabled or isatty is None or not isatty():
        yield lambda _phase: None
        return
    bars = _Bars(console)
    # Log handlers made before the bars (``edgec -v``, ORT's root warnings) hold the terminal itself: while the
    # bars run they write through rich's stderr instead, so their lines print above the bars, not through them.
    terminal = console.file
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is terminal]
    with bars.progress, core_progress.installed(bars):
        for handler in handlers:
            handler.setStream(sys.stderr)  # rich's proxy while the bars are live
        try:
            yield bars.phase
        finally:
            for handler in handlers:
                handler.setStream(terminal)


class _Bars:
    """``edgec.core.progress``'s reporter on a rich Progress: one row per open task (nested ones indented)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), _BarColumn(), _CountColumn(),
                                 TimeElapsedColumn(), _EtaColumn(), console=console, transient=True,
                                 refresh_per_second=4)  # few redraws: they share the cores with the timing
        self._phase = self.progress.add_task("[bold]starting[/]...", total=None, phase=True)
        self._indent: dict[TaskID, str] = {}  # open tasks, each indented by the number open when it began

    def phase(self, text: str) -> None:
        self.progress.update(self._phase, description=f"[bold]{escape(text)}[/]...")

    def start(self, label: str, total: float | None) -> object:
        indent = "  " * len(self._indent)
        task_id = self.progress.add_task(indent + escape(label), total=total)
        self._indent[task_id] = indent
        return task_id

    def update(self, handle: object, *, advance: float = 0, completed: float | None = None,
               total: float | None = None, label: str | None = None) -> None:
        task_id = cast(TaskID, handle)
        description = None if label is None else self._indent[task_id] + escape(label)
        self.progress.update(task_id, advance=advance, completed=completed, total=total, description=description)

    def stop(self, handle: object) -> None:
        self._indent.pop(cast(TaskID, handle), None)
        self.progress.remove_task(cast(TaskID, handle))


class _BarColumn(BarColumn):
    """The bar, except on the phase line."""

    def render(self, task: ProgressTask) -> Any:
        return Text("") if task.fields.get("phase") else super().render(task)


class _CountColumn(ProgressColumn):
    """``M/N`` done, where the total is known."""

    def render(self, task: ProgressTask) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{task.completed:.0f}/{task.total:.0f}", style="progress.download")


class _EtaColumn(ProgressColumn):
    """``ETA h:mm:ss`` where the total is known: the time so far per item, times the items left.

    The mean over the whole task, not rich's recent rate: a search's count moves once a round, minutes apart.
    """

    def render(self, task: ProgressTask) -> Text:
        if task.total is None:
            return Text("")
        elapsed = task.elapsed
        if not task.completed or elapsed is None:
            return Text("ETA -:--:--", style="progress.remaining")
        left = max(0.0, elapsed * (task.total - task.completed) / task.completed)
        return Text(f"ETA {datetime.timedelta(seconds=round(left))}", style="progress.remaining")


def to_plain(value: Any) -> Any:
    """Dataclasses (nested) to dicts, for JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def build_json(result: Any) -> dict[str, Any]:
    """The build result as plain data."""
    return {
        "bundle": str(result.bundle),
        "report": str(page_path(result.bundle)),
        "target": result.target,
        "passes": [r.to_json() for r in result.records],
        "metrics": to_plain(result.metrics),
        "notes": result.notes,
        "warnings": result.warnings,
    }


def pass_table(records: Iterable[Any]) -> Table:
    """One row per pass: nodes, params, FLOPs, bytes before -> after, time, error."""
    table = Table(title="passes")
    for col in ("pass", "nodes", "params", "FLOPs", "bytes", "time s", "max rel err", "min cosine"):
        table.add_column(col, justify="left" if col == "pass" else "right")
    for r in records:
        def arrow(key: str, r: Any = r) -> str:
            return f"{_human(r.before[key])} -> {_human(r.after[key])}"

        table.add_row(r.name, arrow("nodes"), arrow("params"), arrow("flops"), arrow("bytes"),
                      f"{r.wall_s:.2f}", f"{r.max_rel_error:.1e}", f"{r.min_cosine:.6f}")
    return table


def calibration_line(entry: dict[str, Any]) -> str:
    """One line on ``metrics.calibration``: the score on the held-out samples, and on those fitted to.

    Empty when nothing was split (no lossy pass) or nothing scored.
    """
    split, held, fit = entry.get("split"), entry.get("held_out"), entry.get("fit")
    if not isinstance(split, dict) or not held or not fit:
        return ""
    if split["in_sample"]:
        return (f"accuracy on calibration samples the passes were also fitted on (in-sample: it flatters): "
                f"{held['before']:.4f} -> {held['after']:.4f} ({split['held_out']} samples); {held['metric']}")
    return (f"accuracy on held-out calibration samples: {held['before']:.4f} -> {held['after']:.4f} "
            f"({split['held_out']} samples; fit on {split['fit']}, where it scores {fit['after']:.4f}); "
            f"{held['metric']}")


def print_build(console: Console, result: Any) -> None:
    """The human summary of a build."""
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(pass_table(result.records))
    m = result.metrics
    if "host_latency_ms" in m:
        lat = m["host_latency_ms"]
        console.print(f"host latency (median, interleaved): {lat['before']:.3f} ms -> {lat['after']:.3f} ms "
                      f"({lat['ratio']:.2f}x)")
    if "accuracy" in m:
        for key, before in (m["accuracy"]["before"] or {}).items():
            console.print(f"{key}: {before:.4f} -> {m['accuracy']['after'][key]:.4f}")
    line = calibration_line(m.get("calibration") or {})
    if line:
        console.print(escape(line), soft_wrap=True)  # one line, however long the measures' names
    console.print(f"bundle written: [bold]{escape(str(result.bundle))}[/] (target {result.target})")


def print_targets(console: Console, profiles: Iterable[TargetProfile]) -> None:
    """The device profiles as a table."""
    table = Table(title="targets")
    for col in ("name", "execution providers", "format", "opt level", "quantization", "channel multiple"):
        table.add_column(col)
    for p in profiles:
        table.add_row(p.name, " > ".join(p.ep_names), p.model_format, p.graph_optimization_level,
                      ", ".join(p.quantization_formats), str(p.channel_multiple))
    console.print(table)


def print_inspect(console: Console, info: dict[str, Any], top: int) -> None:
    """Model summary, op histogram, the heaviest nodes, and EP support."""
    console.print(f"opset {info['opset']}  ir {info['ir_version']}  producer {info['producer']}")
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            console.print(escape(f"{kind[:-1]:>6} {io['name']}: {io['dtype']} {io['shape']}"))
    console.print(f"nodes {info['nodes']}  params {_human(info['params'])}  size {_human(info['size_bytes'])}B  "
                  f"FLOPs {_human(info['flops'])}")
    console.print("ops: " + ", ".join(f"{op} {n}" for op, n in info["op_histogram"].items()))
    table = Table(title=f"top {top} nodes by FLOPs")
    for col in ("node", "op", "FLOPs", "share"):
        table.add_column(col, justify="right" if col in ("FLOPs", "share") else "left")
    for cost in info["node_flops"][:top]:
        table.add_row(escape(cost["name"]), cost["op_type"], _human(cost["flops"]),
                      f"{cost['flops'] / max(info['flops'], 1):.1%}")
    console.print(table)
    if info["blocks"]:
        blocks = Table(title="residual blocks (prune-depth)")
        for col in ("block", "kind", "nodes", "removable"):
            blocks.add_column(col)
        for block in info["blocks"]:
            blocks.add_row(escape(block["name"]), block["kind"], str(block["nodes"]),
                           "yes" if block["removable"] else escape(f"no: {block['reason']}"))
        console.print(blocks)
    console.print(f"target {info['target']}: nodes per provider {info['nodes_per_provider']}")
    for p in info["unsupported"]:
        console.print(f"[red]cannot run:[/] {escape(p['node'])} ({p['domain']}:{p['op_type']})")
    for p in info["fallback"][:top]:
        console.print(f"falls back: {escape(p['node'])} ({p['op_type']}) -> {p['provider']}")


def print_profile(console: Console, result: dict[str, Any]) -> None:
    """Latency percentiles and the slowest nodes."""
    console.print(f"{escape(result['source'])}: {result['runs']} runs after {result['warmup']} warm-up, "
                  f"{result['threads']} thread(s)")
    console.print(f"p50 {result['p50_ms']:.3f} ms   p90 {result['p90_ms']:.3f} ms   p99 {result['p99_ms']:.3f} ms")
    table = Table(title="top nodes by time")
    for col in ("node", "op", "provider", "total ms", "share"):
        table.add_column(col, justify="right" if col in ("total ms", "share") else "left")
    for n in result["top_nodes"]:
        table.add_row(escape(n["name"]), n["op_type"], n.get("provider") or "", f"{n['total_ms']:.3f}",
                      f"{n['share']:.1%}")
    console.print(table)


def print_verify(console: Console, result: Any) -> None:
    """Each check of a bundle verification, and the verdict."""
    for check in result.checks:
        mark = "[green]ok[/]" if check.ok else "[red]FAIL[/]"
        console.print(f"{mark} {check.name}: {escape(check.detail)}")
    console.print("[bold green]bundle verified[/]" if result.ok else "[bold red]bundle failed verification[/]")
