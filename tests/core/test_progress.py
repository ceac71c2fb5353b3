"""edgec.core.progress: tasks do nothing without a reporter, and real work reports the counts it does.

The build, search, profile and sweep tests install a ``Recorder`` around the real code (the CLI in click's
runner, where no bars are drawn: its stderr is no terminal) and check each task's total against what the
work itself says it did.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from edgec.compiler.cli import cli
from edgec.compiler.sweep_models import load_sweep_models
from edgec.core import progress
from edgec.models.zoo import get_zoo_model
from edgec.runtime.devices.sweep import export_device_file
from edgec.runtime.profile import PROFILED_RUNS, profile_model


def test_without_a_reporter_tasks_do_nothing_and_track_yields_everything():
    assert not progress.active()
    with progress.task("work", total=3) as step:
        step()
        step.update(completed=2, total=5, label="more work")
    assert list(progress.track(range(4), "items")) == [0, 1, 2, 3]


def test_recorder_sees_totals_moves_labels_and_nesting():
    rec = progress.Recorder()
    with progress.installed(rec):
        assert progress.active()
        with progress.task("outer", total=2) as outer:
            for _ in progress.track([10, 20, 30], "inner"):
                pass
            outer(2)
            outer.update(label="outer, best 0.5")
        with progress.task("nothing to do", total=0) as empty:  # a total of 0 shows no task
            empty()
        with progress.task("size unknown"):
            pass
    assert not progress.active()
    outer_rec, inner_rec, unknown = rec.tasks
    assert (outer_rec.labels, outer_rec.total, outer_rec.completed, outer_rec.depth) == (
        ["outer", "outer, best 0.5"], 2, 2, 0)
    assert (inner_rec.total, inner_rec.completed, inner_rec.depth) == (3, 3, 1)
    assert (unknown.total, unknown.completed) == (None, 0)
    assert all(t.stopped for t in rec.tasks)


def test_a_task_left_by_an_error_is_stopped():
    rec = progress.Recorder()
    with progress.installed(rec), pytest.raises(ValueError):
        for item in progress.track([1, 2, 3], "items"):
            if item == 2:
                raise ValueError(item)
    (task,) = rec.tasks
    assert (task.total, task.completed, task.stopped) == (3, 1, True)


def _cli(rec: progress.Recorder, *args: str):
    with progress.installed(rec):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_quantize_int8_reports_calibration_and_the_sensitivity_ranking(tmp_path):
    config = tmp_path / "edgec.toml"
    config.write_text('target = "cpu-x86"\npasses = ["cleanup", "quantize-int8"]\n'
                      '[pass-options.quantize-int8]\nplacement = "all"\nkeep_float = 1\nsamples = 6\n')
    rec = progress.Recorder()
    result = _cli(rec, "build", "zoo:digits-cnn", "--config", str(config), "-o", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)["passes"][-1]["stats"]
    # Ranges from the 6 samples asked for, once: every later build of the pass reads them from the cache.
    (calibration,) = rec.named("calibration")
    assert (calibration.total, calibration.completed, calibration.stopped) == (6, 6, True)
    assert stats["samples"] == 6
    # One build per weighted node ranked (digits-cnn: 3 Conv and a Gemm), each one counted.
    (ranking,) = rec.named("sensitivity ranking")
    assert ranking.total == ranking.completed == len(stats["sensitivity"]) == 4
    assert ranking.stopped


def test_a_latency_ratio_search_counts_its_candidates(tmp_path):
    rec = progress.Recorder()
    result = _cli(rec, "build", "zoo:digits-cnn", "--target", "cpu-x86", "--latency-ratio", "0.9", "--budget", "4",
                  "--layer-budget", "0", "-o", str(tmp_path / "b"), "--json")
    # Whether 0.9 is reachable is the host's timing to decide; either way the search tried its candidates.
    if result.exit_code == 0:
        tried = json.loads(result.stdout)["metrics"]["search"]["evaluations"]
    else:
        assert result.exit_code == 2 and "unreachable" in result.stderr, result.stderr
        tried = int(re.search(r"(\d+) candidates tried", result.stderr)[1])
    (search,) = rec.named("search candidates")
    assert search.total == 4 and search.stopped
    assert search.completed == tried and 1 <= tried <= 4
    # The label carries the best candidate so far: accuracy at latency, or none while none fits the target.
    # Which it ends on is timing (digits-cnn runs in ~25 us): the original, whose share the target is, is
    # re-timed every round, and at the end a candidate that was over the target can fit; so both forms pass.
    best = search.labels[-1].removeprefix("search candidates, best ")
    assert re.fullmatch(r"none yet|[\d.]+ at [\d.e+-]+ ms", best), search.labels


def test_profile_reports_warm_up_timed_and_profiled_runs():
    zoo = get_zoo_model("digits-cnn")
    feeds = {k: np.asarray(v) for k, v in zoo.calibration(1)[0].items()}
    rec = progress.Recorder()
    with progress.installed(rec):
        result = profile_model(zoo.onnx_path().read_bytes(), feeds, runs=37, warmup=3, top=3)
    assert result.runs == 37
    assert [(t.labels[0], t.total, t.completed) for t in rec.tasks] == [
        ("warm-up runs", 3, 3), ("timed runs", 37, 37), ("profiled runs", PROFILED_RUNS + 1, PROFILED_RUNS + 1)]


class _History(progress.Recorder):
    """A Recorder that also keeps every ``completed`` it is told, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.completed_seen: list[float] = []

    def update(self, handle, *, advance=0, completed=None, total=None, label=None) -> None:
        super().update(handle, advance=advance, completed=completed, total=total, label=label)
        if completed is not None:
            self.completed_seen.append(completed)


def test_the_device_sweep_counts_the_micro_models_it_builds_and_times(tmp_path):
    rec = _History()
    with progress.installed(rec):
        doc = export_device_file("local", tmp_path / "dev.json", models=load_sweep_models(["digits-cnn"]),
                                 max_per_op=2, runs=2, warmup=0)
    built, timed = rec.tasks
    assert built.labels[0] == "device sweep: building micro-models"
    assert built.total == built.completed == len({e["key"].rsplit("|", 1)[0] for e in doc["entries"]}) > 0
    # The device runs every micro-model in one job; its runner reports each one as it is timed.
    ran = [e for e in doc["entries"] if not e.get("error", "").startswith("build:")]
    assert timed.labels[0] == "device sweep: timing micro-models on local"
    assert timed.total == timed.completed == len(ran) > 1 and timed.stopped
    assert rec.completed_seen == list(range(1, len(ran) + 1))
