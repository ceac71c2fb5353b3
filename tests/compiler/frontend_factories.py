"""Small torch module factories the frontend tests name as 'frontend_factories:NAME', and an ORT helper."""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Conv -> BN -> ReLU -> pool -> linear: the shape of a small image classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


class TwoInputs(nn.Module):
    """Two inputs, so input naming and order are checked."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(a) * b


class DataDependentBranch(nn.Module):
    """Python `if` on a tensor value: torch.export refuses it; the legacy tracer bakes in one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2.0
        return x - 1.0


class TokenPooler(nn.Module):
    """Embedding of input_ids, mean-pooled under attention_mask: a text model's input contract."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 6)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return (self.embed(input_ids) * mask).sum(1) / mask.sum(1)


def _seeded(cls: type[nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = cls()
    return module.eval()


def tiny_convnet() -> nn.Module:
    return _seeded(TinyConvNet)


def two_inputs() -> nn.Module:
    return _seeded(TwoInputs)


def data_dependent() -> nn.Module:
    return _seeded(DataDependentBranch)


def token_pooler() -> nn.Module:
    return _seeded(TokenPooler)


def not_a_module() -> object:
    return {"weights": [1, 2, 3]}


def broken_factory() -> nn.Module:
    raise RuntimeError("checkpoint weights.pt not found")
