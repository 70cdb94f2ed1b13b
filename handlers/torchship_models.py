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


class SentimentClassifier(nn.Module):
    """Bag of words and word pairs: EmbeddingBag (mean) -> Linear, fastText-style."""

    def __init__(self, vocab_size: int, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(ids, offsets))


class FashionCNN(nn.Module):
    """Two conv blocks and two linear layers for 1x28x28 images."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class MatrixFactorization(nn.Module):
    """User and item embeddings plus an item bias; a user's score for every item in one matmul."""

    def __init__(self, users: int, items: int, dim: int = 32) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.item_bias = nn.Embedding(items, 1)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1) + self.item_bias(items).squeeze(-1)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.user(users) @ self.item.weight.T + self.item_bias.weight.T


ARCHITECTURES = {"mlp": MLP, "sentiment": SentimentClassifier, "fashion": FashionCNN, "recommender": MatrixFactorization}


def build(kind: str, architecture: dict) -> nn.Module:
    """The model for `kind`, built from the architecture recorded in the checkpoint's meta.json."""
    return ARCHITECTURES[kind](**architecture)


