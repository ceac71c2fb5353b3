"""The edgec command line: a thin shell over build, targets, inspect, profile and verify.

Exit codes: 0 ok, 2 user error (one line naming the culprit), 1 internal error (with traceback).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from edgec.compiler import report
from edgec.core.errors import EdgecError

err_console = Console(stderr=True, highlight=False)
# Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _fail(message: str, code: int) -> None:
    # Messages quote user text ("[calibration.image]", shapes): never parse them as rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EdgecError into one line and its exit code; Ctrl-C into exit 2 with nothing written."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgecError as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", 2)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            where = exc.filename or "a temporary file"
            _fail(f"no space left writing {where} ({exc.strerror}); nothing was written", 2)

    return wrapper


# A full disk, a quota, or a file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored).
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM ends a build like Ctrl-C: the same cleanup (temp dirs, staged bundle), exit 2."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# click 8.2+ raises it for a group called with no arguments (older versions print the help themselves).
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _OneLineUsageErrors(click.Group):
    """A click group whose usage errors are one line and exit 2.

    A usage error (unknown option, bad value) then reads like every other user mistake, instead of click's
    usage block.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a bare `edgec`: the help, laid out, not squeezed onto one line
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) is not None else ""
            _fail(" ".join(exc.format_message().split()) + hint, 2)
        except click.exceptions.Abort:
            _fail("interrupted; nothing was written", 2)
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)


def _examples(*commands: str) -> str:
    """A help epilog of example commands; its first line, a backspace, keeps click from rewrapping them."""
    return "\b\nExamples:\n" + "\n".join(f"  {command}" for command in commands)


# Each help page ends with commands that run as written (tests/compiler/cli/test_help.py runs or parses them);
# the bundle examples use the one the first build example writes.
_BUILD_MNIST = "edgec build zoo:mnist-resnet --target android-arm64 --passes cleanup,fuse,quantize-int8 -o mnist-bundle"
EXAMPLES = {
    "edgec": _examples("edgec targets", _BUILD_MNIST, "edgec verify mnist-bundle"),
    "build": _examples(_BUILD_MNIST,
                       "edgec build zoo:resnet18 --target android-arm64 --latency-ratio 0.7 -o resnet18-fast",
                       "edgec build zoo:mnist-resnet --target cpu-x86,android-arm64 -o mnist-package"),
    "targets": _examples("edgec targets", "edgec targets --json"),
    "inspect": _examples("edgec inspect zoo:resnet18 --target android-arm64", "edgec inspect mnist-bundle --top 5"),
    "profile": _examples("edgec profile mnist-bundle --runs 50 --warmup 5", "edgec profile zoo:resnet18 --threads 2"),
    "verify": _examples("edgec verify mnist-bundle", "edgec verify mnist-bundle --json"),
    "report": _examples("edgec report mnist-bundle", "edgec report mnist-bundle -o mnist-report.html"),
    "demo": _examples("edgec demo", "edgec demo -o my-demo"),
}


@click.group(cls=_OneLineUsageErrors, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXAMPLES["edgec"])
@click.option("-v", "--verbose", is_flag=True, help="Log library messages to stderr.")
@click.version_option(package_name="edgec")
def cli(verbose: bool) -> None:
    """edgec: compile ONNX, PyTorch and Hugging Face models into fast, verified edge bundles."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


_TASK_HELP = ("Hugging Face folder: the optimum-onnx export task (feature-extraction, text-classification, ...); "
              "default: inferred from config.json and sentence-transformers files.")


@cli.command(epilog=EXAMPLES["build"])
@click.argument("model", required=False)
@click.option("--target", help="Device profile (see `edgec targets`), or several comma-separated "
              "(cpu-x86,android-arm64): one bundle per target in the package folder -o OUT, with OUT/package.json.")
@click.option("--task", help=_TASK_HELP)
@click.option("--calib", help="Calibration data: .npz, image folder, text file, or 'random'.")
@click.option("--passes", "passes", help="Comma-separated passes, e.g. cleanup,fuse.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="An edgec.toml build file.")
@click.option("--input-shape", "input_shapes", multiple=True, help="name=1x3x224x224 (repeatable).")
@click.option("-o", "--output", help="Bundle path to write (several targets: the package folder).")
@click.option("--format", "fmt", type=click.Choice(["dir", "zip"]), help="Bundle as a directory or a zip.")
@click.option("--force", is_flag=True, default=None, help="Replace an existing output.")
@click.option("--strict", is_flag=True, default=None, help="Stop with exit 2 on any warning (NaN/Inf weights, "
              "ops that fall back to the CPU, calibration data left out) instead of building.")
@click.option("--seed", type=int, help="Seed for random calibration data and search.")
@click.option("--timing/--no-timing", default=None, help="Time the input and built models on this host and "
              "profile their nodes for the report (default); --no-timing skips it, most of a big model's build.")
@click.option("--max-drop", type=click.FloatRange(0, 1), help="Accuracy budget for lossy passes: largest drop of "
              "the task metric (or of the output-agreement proxy) they may cause; they keep sensitive nodes precise "
              "to meet it. "
              "With no --passes: search for the fastest model within this drop.")
@click.option("--latency-ms", type=click.FloatRange(0, min_open=True), help="Search for the most accurate model "
              "that runs within this many ms on the target (with --max-drop: also within that drop).")
@click.option("--latency-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Search for the most accurate model within this fraction of the input model's latency, both "
              "timed in the same interleaved rounds (robust to a busy host; e.g. 0.5 for twice as fast).")
@click.option("--budget", type=click.IntRange(1), help="Search: candidate builds at most (default 24); with "
              "--max-drop alone, searches for the fastest model within the drop.")
@click.option("--layer-budget", type=click.IntRange(0), help="Search: further builds that refine per-layer widths "
              "around the best uniform choice under a latency target (default half of --budget with the guided "
              "strategy, none with random; 0: none).")
@click.option("--strategy", type=click.Choice(["guided", "random"]), help="Search strategy (default guided).")
@click.option("--scheduler", help="Search: build candidates on a dask cluster at tcp://HOST:PORT (the dist extra).")
@click.option("--metric", help="Search: accuracy as package.module:function(model_bytes, feeds) -> float.")
@click.option("--device-file", multiple=True, help="Search: predict latency from this device file (edgec profile "
              "--export-device); with several targets TARGET=PATH (repeatable or comma-separated).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@handle_errors
def build(model: str | None, config_path: Path | None, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Compile MODEL (ONNX file, package.module:factory, HF folder or zoo:NAME) into a bundle.

    With --latency-ms (or --max-drop and no --passes) edgec searches pruning, depth and precision
    choices for the best model under the constraint, writes it, and next to it OUT.search-choice.toml
    (rebuild with --config) and OUT.pareto.png.

    Several targets (--target cpu-x86,android-arm64 --device-file android-arm64=phone.json) make a
    package folder OUT: one bundle (and search) per target, OUT/<target>/, and OUT/package.json listing
    them (EPs, latency, accuracy, choice); a build that several targets make identically is made once.
    """
    if model is None and config_path is None:
        _start_here(as_json)
    from edgec.compiler.build import run_build
    from edgec.compiler.config import make_build_config, parse_pass_list
    from edgec.compiler.report_page import page_path

    if flags["passes"] is not None:
        flags["passes"] = parse_pass_list(flags["passes"])
    flags["device_file"] = ",".join(flags["device_file"]) or None
    cfg = make_build_config({"model": model, **flags}, config_path)
    if len(cfg.targets) > 1:
        _build_package(cfg, as_json, quiet)
        return
    # Third-party calibrators print progress; stdout carries only our report (and must stay valid --json).
    with report.progress(err_console, enabled=not (quiet or as_json)) as on_phase, \
            contextlib.redirect_stdout(sys.stderr):
        result = run_build(cfg, on_phase)
    if as_json:
        _emit_json(report.build_json(result))
    elif not quiet:
        report.print_build(out_console, result)
        if "search" in result.metrics:
            _print_search(out_console, result.metrics["search"])
        out_console.print(f"report: [bold]{escape(str(page_path(result.bundle)))}[/]")


def _start_here(as_json: bool) -> None:
    """`edgec build` with neither MODEL nor --config: what to run first; exit 2, as nothing was built."""
    demo = ("edgec demo", "a first run on zoo models, about two minutes") if "demo" in cli.commands else \
        ("make demo", "in the edgec checkout: a first run on zoo models")
    lines = [f"  {demo[0]:<20} {demo[1]}", f"  {_BUILD_MNIST}", f"  {'edgec build --help':<20} every option, "
             "with examples"]
    # The error contract keeps stderr to one line; the pointers to start from go to stdout.
    if not as_json:
        out_console.print("Start here:\n" + escape("\n".join(lines)), soft_wrap=True, highlight=False)
    err_console.print("[bold red]error:[/] nothing to build: give a MODEL (ONNX file, package.module:factory, "
                      "HF folder or zoo:NAME) or --config FILE", soft_wrap=True)
    sys.exit(2)


def _build_package(cfg: Any, as_json: bool, quiet: bool) -> None:
    """Several targets: build the package, then report each variant as a single build is reported."""
    from edgec.compiler.package import run_package
    from edgec.compiler.report_page import page_path

    with report.progress(err_console, enabled=not (quiet or as_json)) as on_phase, \
            contextlib.redirect_stdout(sys.stderr):
        result = run_package(cfg, on_phase)
    if as_json:
        _emit_json({"package": str(result.path), "manifest": result.manifest,
                    "variants": [report.build_json(v) for v in result.variants]})
        return
    if quiet:
        return
    for variant in result.variants:
        report.print_build(out_console, variant)
        if "search" in variant.metrics:
            _print_search(out_console, variant.metrics["search"])
        out_console.print(f"report: [bold]{escape(str(page_path(variant.bundle)))}[/]")
    out_console.print(f"package: {escape(str(result.path))} ({len(result.variants)} targets, "
                      f"{result.manifest['shared_builds']} builds shared between them)")


def _print_search(console: Console, search: dict[str, Any]) -> None:
    """The Pareto front of a search, the chosen candidate, and where its files are."""
    from rich.table import Table

    table = Table(title=f"Pareto front ({search['evaluations']} candidates, {search['strategy']}; "
                        f"accuracy: {escape(search['metric'])})")
    for col in ("", "candidate", "latency ms", "accuracy", "drop"):
        table.add_column(col, justify="right" if col in ("latency ms", "accuracy", "drop") else "left")
    for row in search["pareto"]:
        table.add_row("*" if row["chosen"] else "", escape(row["candidate"]), f"{row['latency_ms']:.4g}",
                      f"{row['accuracy']:.4f}", f"{row['drop']:+.4f}")
    console.print(table)
    _print_pass_shares(console, search.get("pass_shares", []))
    chosen, latency = search["chosen"], search["chosen"]["latency_ms"]
    console.print(f"chosen: {escape(chosen['candidate'])} ({escape(', '.join(chosen['passes']))}): latency "
                  f"{latency['predicted']:.4g} ms predicted ({escape(search['latency_source'])}), "
                  f"{latency['measured']:.4g} ms measured on this host; accuracy {chosen['accuracy']:.4f}")
    files = search["files"]
    console.print(f"search files next to the bundle: {escape(files['choice'])}, {escape(files['plot'])}")


def _print_pass_shares(console: Console, rows: list[dict[str, Any]]) -> None:
    """Each pass's latency after it and share of the saving (signed; "-" when the saving is noise)."""
    from rich.table import Table

    if not rows:
        return
    table = Table(title="Where the saving comes from", caption="each stage timed, interleaved with the original")
    for col in ("pass", "ms after", "saved ms", "share"):
        table.add_column(col, justify="left" if col == "pass" else "right")
    table.add_row("(original)", f"{rows[0]['ms_after'] + rows[0]['saved_ms']:.4g}", "", "")
    for row in rows:
        if not row["changed"]:
            table.add_row(f"{escape(row['pass'])} (no change)", f"{row['ms_after']:.4g}", "0", "0%")
            continue
        share = "-" if row["share"] is None else f"{row['share']:+.0%}"
        table.add_row(escape(row["pass"]), f"{row['ms_after']:.4g}", f"{row['saved_ms']:+.4g}", share)
    console.print(table)
    reasons = {row["reason"] for row in rows if row.get("reason")}
    for reason in sorted(reasons):
        console.print(f"no shares: {escape(reason)}")


@cli.command(epilog=EXAMPLES["targets"])
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
@handle_errors
def targets(as_json: bool) -> None:
    """List device profiles and what each supports."""
    from edgec.targets.registry import all_targets

    profiles = all_targets()
    if as_json:
        _emit_json({name: p.to_json() for name, p in profiles.items()})
    else:
        report.print_targets(out_console, profiles.values())


@cli.command(epilog=EXAMPLES["inspect"])
@click.argument("source")
@click.option("--target", help="Check op support against this target (default: the bundle's, or cpu-x86).")
@click.option("--task", help=_TASK_HELP)
@click.option("--input-shape", "input_shapes", multiple=True, help="name=1x3x224x224 (repeatable).")
@click.option("--top", default=15, show_default=True, help="Nodes to list by FLOPs.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (all nodes).")
@handle_errors
def inspect(source: str, target: str | None, task: str | None, input_shapes: tuple[str, ...], top: int,
            as_json: bool) -> None:
    """Opset, inputs/outputs, op histogram, params, FLOPs per node, ops the target cannot run."""
    from edgec.compiler.inspect import inspect_source

    info = inspect_source(source, target, input_shapes, task=task)
    if as_json:
        _emit_json(info)
    else:
        report.print_inspect(out_console, info, top)


@cli.command("report", epilog=EXAMPLES["report"])
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="The page to write (default: BUNDLE.report.html, next to the bundle, as edgec build writes it).")
@click.option("--device-run", "device_runs", multiple=True, type=click.Path(path_type=Path),
              help="The --json output of `edgec profile/verify BUNDLE --device ...`, shown in the device section "
              "(repeatable).")
@handle_errors
def report_page_cmd(bundle: Path, out: Path | None, device_runs: tuple[Path, ...]) -> None:
    """Write one self-contained HTML page for BUNDLE (no network needed to view it).

    Model card, passes, where the time goes per node, why it is not faster, sensitivity and per-layer choices,
    the search, and device runs.
    """
    from edgec.compiler.report_page import read_device_runs, write_page

    path = write_page(bundle, out, read_device_runs(device_runs))
    out_console.print(f"report written: [bold]{escape(str(path))}[/]")


def _device_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by profile and verify for running on a device instead of this host."""
    options = [
        click.option("--device", help="Run on a device: local, ssh:USER@HOST[:PORT] or adb:SERIAL (a bundle only)."),
        click.option("--device-python", help="local/ssh: the device's python with numpy and onnxruntime."),
        click.option("--ssh-config", type=click.Path(path_type=Path), help="ssh: use this ssh config file."),
        click.option("--timeout", "timeout_s", default=600.0, show_default=True, type=click.FloatRange(1),
                     help="Seconds allowed for the run on the device."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command(epilog=EXAMPLES["profile"])
@click.argument("source")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(1), help="Timed runs.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0), help="Untimed runs first.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Intra-op threads.")
@click.option("--task", help=_TASK_HELP)
@click.option("--input-shape", "input_shapes", multiple=True, help="name=1x3x224x224 (repeatable).")
@_device_options
@click.option("--runner", type=click.Path(path_type=Path), help="adb: onnxruntime_perf_test built for Android.")
@click.option("--big-cores/--no-big-cores", default=True, show_default=True, help="adb: pin to the fastest cores.")
@click.option("--export-device", type=click.Path(path_type=Path),
              help="Also run the op sweep on the device and write its latency file (for the search).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@handle_errors
def profile(source: str, runs: int, warmup: int, threads: int, task: str | None, input_shapes: tuple[str, ...],
            device: str | None, device_python: str | None, ssh_config: Path | None, timeout_s: float,
            runner: Path | None, big_cores: bool, export_device: Path | None, as_json: bool, quiet: bool) -> None:
    """Latency p50/p90/p99 and the top nodes by time (ORT profiler) of a model or bundle."""
    with report.progress(err_console, enabled=not (quiet or as_json)) as on_phase:
        if device or export_device:
            from edgec.compiler.sweep_models import load_sweep_models
            from edgec.runtime.devices import export_device_file, profile_on_device

            dev, cfg = device or "local", str(ssh_config) if ssh_config else None
            on_phase(f"profiling on {dev}")
            result = profile_on_device(source, dev, runs=runs, warmup=warmup, threads=threads,
                                       runner=str(runner) if runner else None, python=device_python,
                                       ssh_config=cfg, timeout_s=timeout_s, big_cores=big_cores)
            if export_device:
                on_phase(f"device sweep on {dev}")
                doc = export_device_file(dev, export_device, models=load_sweep_models(), target=source,
                                         python=device_python, ssh_config=cfg, timeout_s=max(timeout_s, 1800),
                                         runner=str(runner) if runner else None, big_cores=big_cores)
                result["device_file"] = {"path": str(export_device), "entries": len(doc["entries"])}
        else:
            from edgec.compiler.inspect import profile_source

            on_phase("profiling")
            result = profile_source(source, runs=runs, warmup=warmup, threads=threads, input_shapes=input_shapes,
                                    task=task)
    if as_json:
        _emit_json(result)
    else:
        report.print_profile(out_console, result)


@cli.command(epilog=EXAMPLES["verify"])
@click.argument("bundle")
@_device_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(bundle: str, device: str | None, device_python: str | None, ssh_config: Path | None, timeout_s: float,
           as_json: bool) -> None:
    """Check a bundle: checksums, schema, load, rerun each stored sample (one per calibration shape), compare.

    On a device (--device) only the first stored sample (sample.npz) runs.
    """
    if device:
        from edgec.runtime.devices import verify_on_device

        result = verify_on_device(Path(bundle), device, python=device_python,
                                  ssh_config=str(ssh_config) if ssh_config else None, timeout_s=timeout_s)
    else:
        from edgec.runtime.loader import verify_bundle

        result = verify_bundle(Path(bundle))
    if as_json:
        _emit_json(report.to_plain(result))
    else:
        report.print_verify(out_console, result)
    if not result.ok:  # the report is on stdout; stderr says why it failed, on one line
        problems = result.problems
        more = f" (and {len(problems) - 1} more failed checks)" if len(problems) > 1 else ""
        _fail(f"{bundle}: verification failed: {problems[0]}{more}", 1)


@cli.command(epilog=EXAMPLES["demo"])
@click.option("-o", "--output", "out", default="demo-bundle", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the demo's bundles and report.")
@handle_errors
def demo(out: Path) -> None:
    """A first run (about two minutes): ResNet-18 int8 next to ORT's quantize_static, then a latency search."""
    from edgec.compiler.demo import run_demo

    def run_cli(args: list[str]) -> None:
        # The real `edgec build`, in this process; its own error handling exits on a failure.
        cli.main(args, standalone_mode=False)

    run_demo(out, out_console, run_cli)


def main() -> None:
    """Console-script entry point."""
    cli()
