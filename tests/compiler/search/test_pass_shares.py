"""Pass shares of a search's latency saving: stage timing on real zoo models, and the share arithmetic.

Timing-dependent figures are never compared with each other here; the tests check which stages are
timed, that unchanged stages reuse a measurement, and the arithmetic that turns medians into shares.
"""

from __future__ import annotations

import pytest

from edgec.compiler.search.evaluate import build_model
from edgec.compiler.search.measure import Measurement
from edgec.compiler.search.report import MIN_SAVING, StageTiming, pass_shares, share_rows, time_stages
from edgec.models.zoo import get_zoo_model
from edgec.targets.registry import get_target


@pytest.fixture(scope="module")
def digits():
    """digits-cnn's bytes, the same model with half its channels pruned, and one feed."""
    zoo = get_zoo_model("digits-cnn")
    original = zoo.onnx_path().read_bytes()
    calibration = zoo.calibration(4)
    pruned = build_model(original, ["prune-channels"], {"prune-channels": {"ratio": 0.5}}, "cpu-x86", calibration,
                         seed=0)
    assert pruned != original
    return original, pruned, calibration[0]


def test_unchanged_stage_reuses_the_previous_measurement(digits):
    original, pruned, feeds = digits
    stages = [("cleanup", original), ("prune-channels", pruned), ("fuse", pruned)]
    base, timings = time_stages(original, stages, get_target("cpu-x86"), feeds)
    assert [t.changed for t in timings] == [False, True, False]
    # Not timed again: the same Measurement object as the stage before (or the original).
    assert timings[0].latency is base
    assert timings[2].latency is timings[1].latency
    assert timings[1].latency is not base and timings[1].latency.runs > 0

    rows = share_rows(base, timings)
    assert [r["pass"] for r in rows] == ["cleanup", "prune-channels", "fuse"]
    assert rows[0]["share"] == 0.0 and rows[0]["saved_ms"] == 0.0 and rows[0]["ms_after"] == base.median_ms
    assert rows[2]["share"] == 0.0 and rows[2]["saved_ms"] == 0.0 and rows[2]["ms_after"] == rows[1]["ms_after"]
    assert rows[1]["saved_ms"] == pytest.approx(base.median_ms - timings[1].latency.median_ms, abs=1e-12)
    # The only pass that changed the model owns the whole saving, or none when the saving is noise.
    assert rows[1]["share"] in (1.0, None)


def test_pass_shares_sum_to_one_or_say_why_not(digits):
    original, pruned, feeds = digits
    rows = pass_shares(original, [("prune-channels", pruned), ("cleanup", pruned)], get_target("cpu-x86"), feeds)
    assert [(r["pass"], r["changed"]) for r in rows] == [("prune-channels", True), ("cleanup", False)]
    assert rows[1]["share"] == 0.0
    if rows[0]["share"] is None:
        assert "to split" in rows[0]["reason"]
    else:
        assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-6)


def _timing(ms: float) -> Measurement:
    return Measurement(median_ms=ms, p90_ms=ms, runs=3, rounds=1, stable=True)


def test_shares_keep_their_sign():
    original = _timing(10.0)
    # prune-channels slows the model by 1 ms, quantize then saves 5: shares -25% and +125%.
    timings = [StageTiming("prune-channels", True, _timing(11.0)), StageTiming("cleanup", False, _timing(11.0)),
               StageTiming("quantize-int8", True, _timing(6.0))]
    rows = share_rows(original, timings)
    assert [r["saved_ms"] for r in rows] == pytest.approx([-1.0, 0.0, 5.0], abs=1e-12)
    assert [r["share"] for r in rows] == pytest.approx([-0.25, 0.0, 1.25], abs=1e-12)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("final_ms", "why"), [(10.0 * (1 - MIN_SAVING / 2), "too little to split"),
                                                (10.5, "made the model slower")])
def test_no_shares_when_the_saving_is_noise_or_a_loss(final_ms, why):
    rows = share_rows(_timing(10.0), [StageTiming("fuse", False, _timing(10.0)),
                                      StageTiming("quantize-int8", True, _timing(final_ms))])
    assert rows[0]["share"] == 0.0  # unchanged: saved nothing, whatever the total
    assert rows[1]["share"] is None and why in rows[1]["reason"]
    assert rows[1]["saved_ms"] == pytest.approx(10.0 - final_ms, abs=1e-12)
