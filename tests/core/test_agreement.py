"""The centered, per-slice agreement score (edgec.core.agreement) against the uncentered cosine it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import outputs

from edgec.core.agreement import agreement_score, output_agreement
from edgec.models.zoo import get_zoo_model
from edgec.runtime.session import compare_outputs


def _runs(name: str, arrays: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{name: a} for a in arrays]


def test_a_constant_output_scores_low_where_the_cosine_flatters() -> None:
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((1, 10)).astype(np.float32) + 10.0 for _ in range(8)]
    constant = [np.full((1, 10), 10.0, np.float32) for _ in range(8)]
    reference, candidate = _runs("logits", logits), _runs("logits", constant)
    assert compare_outputs(reference, candidate)[0].cosine > 0.95  # what the old proxy reported
    assert agreement_score(reference, candidate) <= 0.1


def test_an_affine_copy_agrees_and_noise_costs_in_proportion() -> None:
    rng = np.random.default_rng(1)
    ref = [rng.standard_normal((1, 32)).astype(np.float32) for _ in range(8)]
    assert agreement_score(_runs("y", ref), _runs("y", [2.0 * r + 3.0 for r in ref])) == pytest.approx(1.0)
    slight = [r + 0.05 * rng.standard_normal(r.shape).astype(np.float32) for r in ref]
    heavy = [r + 1.0 * rng.standard_normal(r.shape).astype(np.float32) for r in ref]
    assert 0.99 < agreement_score(_runs("y", ref), _runs("y", slight)) < 1.0
    assert agreement_score(_runs("y", ref), _runs("y", heavy)) < 0.8


def test_probability_rows_are_scored_by_kl() -> None:
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((8, 4, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    uniform = np.full_like(probs, 0.1)
    (same,) = output_agreement(_runs("p", list(probs)), _runs("p", list(probs)))
    (flat,) = output_agreement(_runs("p", list(probs)), _runs("p", list(uniform)))
    assert same.measure == flat.measure == "kl"
    assert same.score == pytest.approx(1.0) and flat.score < 0.3


def test_shape_change_or_new_nan_scores_zero() -> None:
    ref = [np.ones((1, 4), np.float32) * np.arange(4)]
    assert agreement_score(_runs("y", ref), _runs("y", [np.ones((1, 5), np.float32)])) == 0.0
    assert agreement_score(_runs("y", ref), _runs("y", [np.array([[0, 1, np.nan, 3]], np.float32)])) == 0.0


def test_held_out_data_exposes_an_overfitted_candidate() -> None:
    """A linear stand-in fitted by least squares on 8 samples of a 32-wide nonlinear layer: exact in-sample."""
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((32, 16))
    x_fit, x_held = rng.standard_normal((8, 32)), rng.standard_normal((24, 32))

    def layer(x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ weights)

    fitted, *_ = np.linalg.lstsq(x_fit, layer(x_fit), rcond=None)
    in_sample = agreement_score(_runs("y", list(layer(x_fit)[:, None])), _runs("y", list((x_fit @ fitted)[:, None])))
    held_out = agreement_score(_runs("y", list(layer(x_held)[:, None])),
                               _runs("y", list((x_held @ fitted)[:, None])))
    assert in_sample == pytest.approx(1.0, abs=1e-6)
    assert held_out < in_sample - 0.2


@pytest.mark.slow
def test_detector_with_wrong_class_scores_scores_low_though_the_cosine_stays_high() -> None:
    """yolo-det's one output concatenates boxes (0..320) and class scores (0..1) along axis 1."""
    zoo = get_zoo_model("yolo-det")
    rng = np.random.default_rng(4)
    feeds = [{"images": rng.standard_normal((1, 3, 320, 320)).astype(np.float32)} for _ in range(2)]
    reference = outputs(zoo.onnx_path(), feeds, level="all")
    wrong = []
    for run in reference:
        out = run["output0"].copy()
        out[:, 4:] = rng.permutation(out[:, 4:], axis=2)  # every class score moved to another anchor
        wrong.append({"output0": out})
    assert compare_outputs(reference, wrong)[0].cosine > 0.99
    (agreement,) = output_agreement(reference, wrong)
    assert agreement.slice_axis == 1 and agreement.worst_slice >= 4
    assert agreement.score < 0.3
    (kept,) = output_agreement(reference, [{"output0": r["output0"] * 1.0} for r in reference])
    assert kept.score == pytest.approx(1.0)
