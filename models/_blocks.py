"""Shared torch building blocks for the zoo CNNs: conv-BN-act, squeeze-excite, inverted residual, init."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

ActFactory = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation, 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: ActFactory | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1x1 reduce -> act -> 1x1 expand -> gate -> scale the input."""

    def __init__(self, channels: int, squeeze: int, act: ActFactory, gate: ActFactory) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet block: expand 1x1, depthwise kxk, optional SE, project 1x1.

    ``se_squeeze`` is the SE bottleneck width (0 for none). The identity shortcut is used when the
    stride is 1 and the channel count is kept.
    """

    def __init__(self, cin: int, expanded: int, cout: int, kernel: int, stride: int, act: ActFactory,
                 se_squeeze: int = 0, se_act: ActFactory = nn.ReLU,
                 se_gate: ActFactory = nn.Hardsigmoid) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se_squeeze:
            layers.append(SqueezeExcite(expanded, se_squeeze, se_act, se_gate))
        layers.append(ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class GlobalAvgPool(nn.Module):
    """[N, C, H, W] -> [N, C] mean; exports as one ReduceMean (no Flatten/Reshape after it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class Classifier(nn.Sequential):
    """Global average pool -> (optional hidden Linear + act) -> dropout -> Linear."""

    def __init__(self, cin: int, classes: int, hidden: int = 0, act: ActFactory = nn.Hardswish,
                 dropout: float = 0.2) -> None:
        layers: list[nn.Module] = [GlobalAvgPool()]
        if hidden:
            layers += [nn.Linear(cin, hidden), act()]
            cin = hidden
        layers += [nn.Dropout(dropout), nn.Linear(cin, classes)]
        super().__init__(*layers)


def init_weights(model: nn.Module) -> None:
    """Variance-preserving init so random-init outputs have a sane scale.

    Conv weights use He-normal over the true fan-in (in_channels/groups * k * k). Frameworks that
    use fan-out count every output channel of a depthwise conv, which shrinks activations by about
    sqrt(C) per depthwise layer: that is why a stock random EfficientNet-B0 gives ~1e-14 logits.
    Linear is N(0, 1/fan_in). BatchNorm gamma is 1 + N(0, 0.1), beta and all biases are N(0, 0.02):
    exact 1s and 0s would make layers of equal width share one initializer after the exporter's
    de-duplication, and make every channel look alike to magnitude-based pruning.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.1)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
        else:
            continue
        if m.bias is not None:
            nn.init.normal_(m.bias, std=0.02)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the body (a training loop) on one torch intra-op thread, restoring the caller's count after.

    Small models gain little from a second thread, and OpenMP threads that spin-wait on each other slow
    training many times over when another process shares the cores: mnist-resnet trains in 33 s on one
    thread either way, but takes 70 s on two beside one busy process, and passed 240 s on CI's 2 cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    """Set BN running stats from one train-mode pass over seeded N(0,1) inputs of ``shape``.

    Every BN then normalises its input to about unit variance in eval mode, so activations and
    logits keep a sane scale at any depth, and BN layers carry non-trivial statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the stats exactly
    model.train()
    model(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
    for m in norms:
        m.momentum = 0.1
    model.eval()


def build_random(factory: Callable[[], nn.Module], seed: int,
                 bn_input: tuple[int, ...] | None = (4, 3, 224, 224)) -> nn.Module:
    """Build ``factory()`` under ``seed``, init it, set BN stats (unless ``bn_input`` is None), eval mode."""
    with seeded(seed):
        model = factory()
        init_weights(model)
    if bn_input is not None:
        calibrate_batchnorm(model, bn_input, seed + 1)
    return model.eval()
