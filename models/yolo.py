"""A YOLOv8-style detector, random init: the graph shapes a user's exported detector has, at a tenth of the cost.

Written the way Ultralytics' YOLOv8 is, so that its ONNX export holds the same patterns: SiLU spelled
``x * sigmoid(x)`` (a Mul that channel pruning must see through), C2f blocks (Split into two halves, a chain
of bottlenecks on the second half, a Concat of every piece), SPPF (three chained MaxPools and a Concat),
nearest-neighbour upsampling in the neck, and an anchor-free head whose distribution-focal boxes are
decoded against a grid built from the feature maps' own H x W. One output ``output0`` [N, 4 + classes, A]
concatenates boxes in pixels (0..H) and class probabilities (0..1), as Ultralytics exports it.

Widths are half of YOLOv8n's (8..128 channels) and there are 20 classes, so a 320 x 320 image costs
about 0.6 GFLOPs. Usable as ``edgec.models.yolo:yolo_det`` by the PyTorch frontend.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.models._blocks import build_random

NUM_CLASSES = 20
REG_MAX = 16  # bins of each box side's distribution (DFL)
STRIDES = (8, 16, 32)


class ConvSiLU(nn.Module):
    """Conv (no bias) + BatchNorm + SiLU written as x * sigmoid(x), as YOLOv8's exports show it."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv, BN, then SiLU."""
        y = self.bn(self.conv(x))
        return y * torch.sigmoid(y)


class Bottleneck(nn.Module):
    """Two 3x3 convs, with the input added back when ``shortcut``."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvSiLU(channels, channels, 3)
        self.cv2 = ConvSiLU(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two convs, plus the input when ``shortcut``."""
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """1x1 conv, Split in two halves, ``n`` bottlenecks chained on the second, Concat all pieces, 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.hidden = cout // 2
        self.cv1 = ConvSiLU(cin, 2 * self.hidden)
        self.cv2 = ConvSiLU((2 + n) * self.hidden, cout)
        self.m = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split, chain the bottlenecks, Concat every piece, fuse with a 1x1 conv."""
        pieces = list(self.cv1(x).split((self.hidden, self.hidden), 1))
        pieces.extend(m(pieces[-1]) for m in self.m)
        return self.cv2(torch.cat(pieces, 1))


class SPPF(nn.Module):
    """1x1 conv, three chained 5x5 max pools, Concat of all four, 1x1 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = ConvSiLU(cin, hidden)
        self.cv2 = ConvSiLU(4 * hidden, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concat the 1x1 conv's output with three chained max pools of it, fuse with a 1x1 conv."""
        pieces = [self.cv1(x)]
        pieces.extend(self.pool(pieces[-1]) for _ in range(3))
        return self.cv2(torch.cat(pieces, 1))


class Detect(nn.Module):
    """Anchor-free head: per level a box branch (4 x REG_MAX bins) and a class branch, decoded to pixels."""

    def __init__(self, channels: tuple[int, ...], classes: int) -> None:
        super().__init__()
        box, cls = max(16, channels[0] // 4, REG_MAX * 2), max(channels[0], classes)
        self.classes = classes
        self.box = nn.ModuleList(nn.Sequential(ConvSiLU(c, box, 3), ConvSiLU(box, box, 3),
                                               nn.Conv2d(box, 4 * REG_MAX, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(ConvSiLU(c, cls, 3), ConvSiLU(cls, cls, 3),
                                               nn.Conv2d(cls, classes, 1)) for c in channels)
        self.register_buffer("bins", torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Boxes (center x, y, width, height in pixels) and class scores of every anchor point, [N, 4 + C, A]."""
        batch = features[0].shape[0]
        boxes, scores, centers, strides = [], [], [], []
        for feature, box, cls, stride in zip(features, self.box, self.cls, STRIDES, strict=True):
            height, width = feature.shape[2], feature.shape[3]
            boxes.append(box(feature).view(batch, 4 * REG_MAX, -1))
            scores.append(cls(feature).view(batch, self.classes, -1))
            ys = torch.arange(height, dtype=torch.float32) + 0.5
            xs = torch.arange(width, dtype=torch.float32) + 0.5
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centers.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1))))
            strides.append(torch.full((1, height * width), float(stride)))
        dist = torch.cat(boxes, 2).view(batch, 4, REG_MAX, -1).transpose(2, 1).softmax(1)
        dist = (dist * self.bins).sum(1)  # [N, 4, A]: expected left, top, right, bottom in grid units
        center, stride = torch.cat(centers, 1), torch.cat(strides, 1)
        lt, rb = dist[:, :2], dist[:, 2:]
        xy = (center + (rb - lt) / 2) * stride
        wh = (lt + rb) * stride
        return torch.cat((xy, wh, torch.cat(scores, 2).sigmoid()), 1)


class YoloDet(nn.Module):
    """Backbone (strides 2..32, C2f, SPPF), PAN neck (nearest upsampling, Concat, C2f), Detect head."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64, 128), classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(ConvSiLU(3, w0, 3, 2), ConvSiLU(w0, w1, 3, 2), C2f(w1, w1, 1, True))
        self.p3 = nn.Sequential(ConvSiLU(w1, w2, 3, 2), C2f(w2, w2, 2, True))
        self.p4 = nn.Sequential(ConvSiLU(w2, w3, 3, 2), C2f(w3, w3, 2, True))
        self.p5 = nn.Sequential(ConvSiLU(w3, w4, 3, 2), C2f(w4, w4, 1, True), SPPF(w4, w4))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top4 = C2f(w4 + w3, w3, 1, False)
        self.top3 = C2f(w3 + w2, w2, 1, False)
        self.down3 = ConvSiLU(w2, w2, 3, 2)
        self.out4 = C2f(w2 + w3, w3, 1, False)
        self.down4 = ConvSiLU(w3, w3, 3, 2)
        self.out5 = C2f(w3 + w4, w4, 1, False)
        self.detect = Detect((w2, w3, w4), classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Detections of an image batch: backbone, PAN neck, then the Detect head on three levels."""
        c3 = self.p3(self.stem(images))
        c4 = self.p4(c3)
        c5 = self.p5(c4)
        t4 = self.top4(torch.cat((self.up(c5), c4), 1))
        t3 = self.top3(torch.cat((self.up(t4), c3), 1))
        o4 = self.out4(torch.cat((self.down3(t3), t4), 1))
        o5 = self.out5(torch.cat((self.down4(o4), c5), 1))
        return self.detect([t3, o4, o5])


def yolo_det() -> nn.Module:
    """The zoo's ``yolo-det``: seeded random init, BN statistics from N(0, 1) images of 320 x 320."""
    return build_random(YoloDet, seed=0, bn_input=(2, 3, 320, 320))
