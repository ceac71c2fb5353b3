"""mnist-det: canvases and their ground truth, decoding/NMS/F1, the trained detector's held-out F1, its export."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from helpers import outputs

from edgec.models import detection
from edgec.models.zoo import get_zoo_model

# Held-out F1 at IoU 0.5 (score > 0.25, NMS), 500 canvases / 993 digits; measured 0.860 after the
# seeded training. The floor leaves room for float differences between CPUs in the seeded training.
F1_FLOOR = 0.8
# fp32 ONNX vs torch at a size other than the export's, max |a-b| / max |a|
EXPORT_RTOL = 1e-4


def _perfect_output(boxes: np.ndarray, labels: np.ndarray, anchors: int = 189) -> np.ndarray:
    """An ``output0`` [14, A] holding exactly the given boxes (score 0.9), every other anchor at score 0."""
    out = np.zeros((4 + detection.CLASSES, anchors), np.float32)
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        out[:4, i] = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]]
        out[4 + label, i] = 0.9
    return out


def test_canvas_ground_truth_is_the_tight_ink_box() -> None:
    calib, held_out = detection.canvases("calib"), detection.canvases("eval")
    assert len(calib.images) == 256 and len(held_out.images) == 500
    # every held-out digit is used once (a digit that found no free place is dropped: at most 1%)
    assert 990 <= sum(len(b) for b in held_out.boxes) <= 1000
    for split in (calib, held_out):
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
        for image, boxes, labels in zip(split.images[:50], split.boxes, split.labels, strict=False):
            assert 1 <= len(boxes) <= detection.MAX_DIGITS and set(labels) <= set(range(10))
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= detection.CANVAS).all()
            sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            assert (sides >= detection.SIDES[0] - 2).all() and (sides <= detection.SIDES[1]).all()
            if len(boxes) == 1:  # one digit: its box is the ink box of the whole canvas
                y0, y1, x0, x1 = detection._ink_box(image)
                np.testing.assert_array_equal(boxes[0], [x0, y0, x1, y1])
    np.testing.assert_array_equal(get_zoo_model("mnist-det").calibration(2, "eval")[1]["images"][0, 2],
                                  held_out.images[1])


def test_f1_of_perfect_shifted_and_mislabelled_detections() -> None:
    truth = detection.canvases("eval")
    n = 20
    perfect = [_perfect_output(b, lab) for b, lab in zip(truth.boxes[:n], truth.labels[:n], strict=True)]
    assert detection.detection_metrics(perfect, truth) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    # a duplicate of each box at IoU > 0.5 is removed by NMS; boxes moved by half their size are misses
    doubled = [np.concatenate([o, o], 1) for o in perfect]
    assert detection.detection_metrics(doubled, truth)["precision"] == 1.0
    shifted = [_perfect_output(b + np.array([1, 0, 1, 0]) * (b[:, 2:3] - b[:, 0:1]) / 2, lab)
               for b, lab in zip(truth.boxes[:n], truth.labels[:n], strict=True)]
    assert detection.detection_metrics(shifted, truth)["f1"] == 0.0
    wrong = [_perfect_output(b, (lab + 1) % 10) for b, lab in zip(truth.boxes[:n], truth.labels[:n], strict=True)]
    assert detection.detection_metrics(wrong, truth)["f1"] == 0.0


def test_trained_detector_reaches_f1_floor() -> None:
    zm = get_zoo_model("mnist-det")
    metrics = zm.evaluate(zm.onnx_path())
    assert metrics is not None and list(metrics)[0] == zm.primary_metric == "f1"
    assert metrics["f1"] >= F1_FLOOR, metrics
    assert min(metrics["precision"], metrics["recall"]) >= F1_FLOOR - 0.05, metrics


def test_export_has_symbolic_dims_and_runs_at_another_size() -> None:
    zm = get_zoo_model("mnist-det")
    graph = onnx.load(zm.onnx_path()).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[0] == "batch" and out_dims[1] == 4 + detection.CLASSES and isinstance(out_dims[2], str)
    images = np.random.default_rng(0).random((2, 3, 128, 160), dtype=np.float32)
    got = outputs(zm.onnx_path(), {"images": images})["output0"]
    assert got.shape == (2, 14, 16 * 20 + 8 * 10 + 4 * 5)
    with torch.no_grad():
        expected = zm.torch_module()(torch.from_numpy(images)).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() < EXPORT_RTOL


def test_splits_are_built_from_their_own_digits() -> None:
    from edgec.models.trained import mnist_data

    data = mnist_data()
    for split, labels in (("calib", data.y_train), ("eval", data.y_test)):
        canvases = detection.canvases(split)
        sources = np.concatenate(canvases.sources)
        np.testing.assert_array_equal(np.concatenate(canvases.labels), labels[sources])
        assert len(np.unique(sources)) == len(sources)  # no digit twice
    assert len(np.concatenate(detection.canvases("eval").sources)) >= 990  # nearly all 1,000 held-out digits
