"""A user hook whose loss diverges at once (`diverging_model:build`): NaN from step 1."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset


def build(config: Any) -> tuple[nn.Module, dict[str, Any], Any]:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(32, 1)

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2).mean() * float("nan")

    return nn.Linear(4, 1), {"train": TensorDataset(x, y), "val": TensorDataset(x, y)}, loss
