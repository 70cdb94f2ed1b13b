"""The example models' architectures, shared by training (train/) and serving (handlers/).

Only torch is imported here: this file is packed into archives and imported by the worker.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """The mission's model: Linear(in -> hidden) -> ReLU -> Linear(hidden -> classes)."""

    def __init__(self, in_features: int = 100, hidden: int = 50, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


ARCHITECTURES = {"mlp": MLP}


def build(kind: str, architecture: dict) -> nn.Module:
    """The model for `kind`, built from the architecture recorded in the checkpoint's meta.json."""
    return ARCHITECTURES[kind](**architecture)
