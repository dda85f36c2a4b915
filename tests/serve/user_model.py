"""A user's entrypoint module (`user_model:build`): the server knows only its batch dimension."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

WIDTH = 4


def build(config: Any) -> tuple[nn.Module, dict[str, Any], Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, WIDTH, generator=g)
    y = (x.sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(WIDTH, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, {"train": TensorDataset(x, y)}, F.cross_entropy
