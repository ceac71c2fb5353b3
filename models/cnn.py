"""Standard ImageNet CNNs (ResNet, MobileNet V2/V3, DenseNet, EfficientNet) as random-init torch factories.

Every factory returns an ``nn.Module`` in eval mode, built under a fixed seed, taking a
``[N, 3, 224, 224]`` float image and returning ``[N, 1000]`` logits. They are usable as
``edgec.models.cnn:resnet18`` (and likewise ``resnet50``, ``mobilenetv2``, ``mobilenetv3_large``,
``densenet121``, ``efficientnet_b0``) by the PyTorch frontend.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.models._blocks import (
    Classifier,
    ConvBNAct,
    InvertedResidual,
    build_random,
    make_divisible,
)

NUM_CLASSES = 1000


# ---------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs plus a shortcut (1x1 conv when the shape changes)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(cin, width, 3, stride), ConvBNAct(width, width, 3, act=None))
        self.shortcut = _shortcut(cin, width, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Body plus shortcut, then ReLU."""
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet-50 block (v1.5, stride on the 3x3): 1x1 reduce, 3x3, 1x1 expand x4, plus shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            ConvBNAct(cin, width, 1), ConvBNAct(width, width, 3, stride), ConvBNAct(width, cout, 1, act=None)
        )
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Body plus shortcut, then ReLU."""
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return ConvBNAct(cin, cout, 1, stride, act=None)


class ResNet(nn.Module):
    """ResNet v1.5: 7x7 stem, max-pool, four stages of residual blocks, global pool, Linear."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for i, depth in enumerate(depths):
            width = 64 * 2**i
            for j in range(depth):
                stages.append(block(cin, width, 2 if j == 0 and i > 0 else 1))
                cin = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = Classifier(cin, NUM_CLASSES, dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of an NCHW image batch: stem, stages, head."""
        return self.head(self.stages(self.stem(x)))


def resnet18(seed: int = 0) -> nn.Module:
    """ResNet-18 (11.7M params), random init."""
    return build_random(lambda: ResNet(BasicBlock, (2, 2, 2, 2)), seed)


def resnet50(seed: int = 0) -> nn.Module:
    """ResNet-50 (25.6M params), random init."""
    return build_random(lambda: ResNet(Bottleneck, (3, 4, 6, 3)), seed)


# ---------------------------------------------------------------- inverted-residual nets
class _MobileNet(nn.Module):
    """Stem conv, a sequence of inverted-residual blocks, a 1x1 head conv and a classifier."""

    def __init__(self, stem: int, blocks: list[nn.Module], last_in: int, head: int,
                 classifier: nn.Module, act: type[nn.Module]) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, stem, 3, 2, act=act)
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(last_in, head, 1, act=act)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))))


# (expand ratio, out channels, repeats, first stride)
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


def _mobilenetv2() -> nn.Module:
    blocks, cin = [], 32
    for t, c, n, s in _V2_STAGES:
        for i in range(n):
            blocks.append(InvertedResidual(cin, cin * t, c, 3, s if i == 0 else 1, nn.ReLU6))
            cin = c
    return _MobileNet(32, blocks, cin, 1280, Classifier(1280, NUM_CLASSES), nn.ReLU6)


def mobilenetv2(seed: int = 0) -> nn.Module:
    """MobileNetV2 1.0 (3.5M params), ReLU6, random init."""
    return build_random(_mobilenetv2, seed)


# (kernel, expanded, out, SE, hardswish, stride)
_V3_LARGE = (
    (3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1),
)


def _mobilenetv3_large() -> nn.Module:
    blocks, cin = [], 16
    for k, exp, cout, se, hs, s in _V3_LARGE:
        squeeze = make_divisible(exp // 4) if se else 0
        act = nn.Hardswish if hs else nn.ReLU
        blocks.append(InvertedResidual(cin, exp, cout, k, s, act, squeeze, nn.ReLU, nn.Hardsigmoid))
        cin = cout
    classifier = Classifier(960, NUM_CLASSES, hidden=1280, act=nn.Hardswish)
    return _MobileNet(16, blocks, cin, 960, classifier, nn.Hardswish)


def mobilenetv3_large(seed: int = 0) -> nn.Module:
    """MobileNetV3-Large 1.0 (5.5M params): hardswish, SE with hardsigmoid gates, random init."""
    return build_random(_mobilenetv3_large, seed)


# (expand ratio, kernel, first stride, out channels, repeats)
_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _efficientnet_b0() -> nn.Module:
    blocks, cin = [], 32
    for t, k, s, cout, n in _B0_STAGES:
        for i in range(n):
            # SE width is a quarter of the block's *input* channels, as in the paper.
            squeeze = max(1, cin // 4)
            blocks.append(InvertedResidual(cin, cin * t, cout, k, s if i == 0 else 1, nn.SiLU, squeeze,
                                           nn.SiLU, nn.Sigmoid))
            cin = cout
    return _MobileNet(32, blocks, cin, 1280, Classifier(1280, NUM_CLASSES), nn.SiLU)


def efficientnet_b0(seed: int = 0) -> nn.Module:
    """EfficientNet-B0 (5.3M params): SiLU, SE with sigmoid gates; fan-in init for a sane output scale."""
    return build_random(_efficientnet_b0, seed)


# ---------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (4k) then BN-ReLU-Conv3x3 (k); the k new channels are concatenated to the input."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        mid = bn_size * growth
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input with the layer's new channels appended."""
        return torch.cat([x, self.body(x)], 1)


def _transition(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """DenseNet-BC: 7x7 stem, dense blocks joined by halving transitions, final BN-ReLU, classifier."""

    def __init__(self, depths: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, stem: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, stem, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = stem
        for i, depth in enumerate(depths):
            for _ in range(depth):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(depths) - 1:
                layers.append(_transition(c, c // 2))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = Classifier(c, NUM_CLASSES, dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of an NCHW image batch."""
        return self.head(self.features(x))


def densenet121(seed: int = 0) -> nn.Module:
    """DenseNet-121 (8.0M params), growth 32, random init."""
    return build_random(DenseNet, seed)
