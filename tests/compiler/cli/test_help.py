"""Every help page ends with 2-3 example commands that parse (and the quick ones run); a bare build says where
to start."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgec.compiler.cli import cli
from edgec.models.zoo import ZOO_NAMES
from edgec.runtime.loader import verify_bundle
from edgec.targets.registry import all_targets

COMMANDS = [(), *((name,) for name in sorted(cli.commands))]
# Examples that search, build for several targets, run the whole demo or export ResNet-18 take from half a minute
# to several on a busy host: parsed here, not run.
SLOW = ("--latency-ratio", "--latency-ms", "demo", "zoo:resnet18")


def _quick(example: list[str]) -> bool:
    target = example[example.index("--target") + 1] if "--target" in example else ""
    return not any(word in example for word in SLOW) and "," not in target


def _help(args: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _examples(args: tuple[str, ...]) -> list[list[str]]:
    """The example commands at the end of a help page, as argument lists (without `edgec`)."""
    lines = _help(args).rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    examples = [line.strip() for line in lines[start + 1:]]
    assert all(line.startswith("edgec ") for line in examples), examples
    return [shlex.split(line)[1:] for line in examples]


def _parse(args: list[str]) -> click.Context:
    """Parse an example as the CLI would (options, types, choices, ranges) without running it."""
    name, *rest = args
    assert name in cli.commands, f"no command {name!r}"
    return cli.commands[name].make_context(name, rest, parent=click.Context(cli, info_name="edgec"))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "edgec")
def test_help_ends_with_examples_that_parse(args: tuple[str, ...]) -> None:
    examples = _examples(args)
    assert 2 <= len(examples) <= 3
    if args:  # a command's examples run that command
        assert all(example[0] == args[0] for example in examples), examples
    targets, zoo = set(all_targets()), {f"zoo:{name}" for name in ZOO_NAMES}
    for example in examples:
        ctx = _parse(example)
        for value in ctx.params.values():
            if isinstance(value, str) and value.startswith("zoo:"):
                assert value in zoo, example
        for target in (ctx.params.get("target") or "").split(","):
            assert not target or target in targets, example


def test_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first build example writes the bundle the verify/inspect/profile/report examples use; the first quick
    # example of each command runs, in the order the help pages list them.
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = []
    for args in [("build",), *COMMANDS]:
        example = next((e for e in _examples(args) if _quick(e) and e[0] not in ran), None)
        if example is None:
            continue
        result = runner.invoke(cli, [*example, "--quiet"] if example[0] == "build" else example)
        assert result.exit_code == 0, f"edgec {shlex.join(example)}: {result.output}"
        ran.append(example[0])
    assert {"build", "targets", "inspect", "profile", "verify"} <= set(ran)
    report = verify_bundle(tmp_path / "mnist-bundle")
    assert report.ok, report.problems
    manifest = json.loads((tmp_path / "mnist-bundle" / "manifest.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["cleanup", "fuse", "quantize-int8"]
    # int8 with the target's defaults stays close to the float model on calibration data.
    assert manifest["passes"][-1]["min_cosine"] > 0.99


@pytest.mark.parametrize("extra", [[], ["--target", "cpu-x86"], ["--json"]])
def test_bare_build_says_where_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["build", *extra])
    assert result.exit_code == 2
    # One line on stderr (the error contract); the pointers on stdout, except under --json.
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: nothing to build: give a MODEL")
    if "--json" in extra:
        assert result.stdout == ""
        return
    lines = result.stdout.splitlines()
    assert lines[0] == "Start here:"
    commands = [re.split(r"\s{2,}", line.strip())[0] for line in lines[1:]]
    assert len(commands) == 3
    assert commands[0] in ("edgec demo", "make demo")
    assert commands[-1] == "edgec build --help"
    _parse(shlex.split(commands[1])[1:])  # the example build parses
    assert commands[1] in _help(("build",))  # and is the build help's own first example
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bare_edgec_prints_the_help_laid_out() -> None:
    result = CliRunner().invoke(cli, [], prog_name="edgec")
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: edgec")
    assert "\nCommands:\n" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].strip() == "edgec verify mnist-bundle"
