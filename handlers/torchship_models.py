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


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int, norm: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if norm:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
        )


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _Dense(hidden, hidden, norm=True, eps=eps)


class _Layer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, eps)
        self.intermediate = _Dense(hidden, intermediate)
        self.output = _Dense(intermediate, hidden, norm=True, eps=eps)


class _Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_positions: int, type_vocab_size: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Encoder(nn.Module):
    def __init__(self, layers: int, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(hidden, intermediate, eps) for _ in range(layers))


class SentenceEncoder(nn.Module):
    """A BERT encoder with mean pooling and L2 normalisation: sentence embeddings, as
    sentence-transformers computes them. Parameter names follow the original checkpoint's, so
    its safetensors load as they are."""

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        intermediate_size: int = 1536,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.heads = num_attention_heads
        self.max_positions = max_position_embeddings
        self.embeddings = _Embeddings(vocab_size, hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps)
        self.encoder = _Encoder(num_hidden_layers, hidden_size, intermediate_size, layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        emb = self.embeddings
        positions = torch.arange(length, device=input_ids.device)
        x = (
            emb.word_embeddings(input_ids)
            + emb.position_embeddings(positions)[None]
            + emb.token_type_embeddings(torch.zeros_like(input_ids))
        )
        x = emb.LayerNorm(x)
        keep = attention_mask[:, None, None, :].bool()  # (batch, 1, 1, length): attend to real tokens only
        for layer in self.encoder.layer:
            att = layer.attention
            q, k, v = (
                lin(x).view(batch, length, self.heads, -1).transpose(1, 2)
                for lin in (att.self.query, att.self.key, att.self.value)
            )
            ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            ctx = ctx.transpose(1, 2).reshape(batch, length, -1)
            x = att.output.LayerNorm(att.output.dense(ctx) + x)
            h = torch.nn.functional.gelu(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(h) + x)
        mask = attention_mask[..., None].to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


class CharTransformer(nn.Module):
    """A small causal transformer over characters: the streaming text generator."""

    def __init__(self, vocab_size: int, dim: int = 128, layers: int = 2, heads: int = 4, context: int = 128) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(context, dim)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.tokens(ids) + self.positions(torch.arange(length, device=ids.device))[None]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        return self.head(self.norm(self.blocks(x, mask=causal, is_causal=True)))


ARCHITECTURES = {
    "mlp": MLP,
    "sentiment": SentimentClassifier,
    "fashion": FashionCNN,
    "recommender": MatrixFactorization,
    "embedder": SentenceEncoder,
    "textgen": CharTransformer,
}


def build(kind: str, architecture: dict) -> nn.Module:
    """The model for `kind`, built from the architecture recorded in the checkpoint's meta.json."""
    return ARCHITECTURES[kind](**architecture)
