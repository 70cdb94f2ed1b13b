"""Handler for `embedder` (all-MiniLM-L6-v2): sentence embeddings and semantic ranking.

Request:  {"texts": ["...", ...]}                  -> {"embeddings": [[384 floats], ...]} (unit length)
          {"query": "...", "candidates": [...]}      -> {"ranked": [{"index", "text", "score"}, ...]} best first
At most 64 texts (or candidates) per request, 2,000 characters each (longer inputs are cut at
256 tokens), and 4,096 tokens per request in all (a 400 beyond: the worst request then takes about
a second of one core, so a full batch of 8 stays far below the 30 s response timeout); a body over
1 MiB answers 413. The texts of every request in a batch go through the model together, sorted by
length and in padded chunks of at most 4,096 tokens (one long text does not pad all the others).
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer
from torchship_base_handler import BatchHandler, ItemError

MAX_TEXTS = 64
MAX_CHARS = 2000
MAX_REQUEST_TOKENS = 4096  # tokens of one request, all its texts together
CHUNK_TOKENS = 4096  # rows x padded width of one forward pass
PAD_ID = 0


class EmbedderHandler(BatchHandler):
    max_body_bytes = 1024 * 1024

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(self.meta.get("max_tokens", 256)))
        self.tokenizer.no_padding()  # padded per chunk in predict

    def _texts(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise ItemError(f"'{field}' must be a non-empty list of strings")
        if len(value) > MAX_TEXTS:
            raise ItemError(f"'{field}' has {len(value)} items; at most {MAX_TEXTS}")
        for text in value:
            self._text(text, field)
        return value

    @staticmethod
    def _text(text: Any, field: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ItemError(f"every item of '{field}' must be a non-empty string")
        if len(text) > MAX_CHARS:
            raise ItemError(f"an item of '{field}' has {len(text)} characters; at most {MAX_CHARS}")
        return text

    def parse(self, payload: Any) -> tuple[str, list[str], list[list[int]]]:
        if isinstance(payload, dict) and "texts" in payload:
            kind, texts = "embed", self._texts(payload["texts"], "texts")
        elif isinstance(payload, dict) and "query" in payload:
            query = self._text(payload["query"], "query")
            kind, texts = "rank", [query, *self._texts(payload.get("candidates"), "candidates")]
        else:
            raise ItemError('expected {"texts": [...]} or {"query": "...", "candidates": [...]}')
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        tokens = sum(len(i) for i in ids)
        if tokens > MAX_REQUEST_TOKENS:
            raise ItemError(f"the request has {tokens:,} tokens in all; at most {MAX_REQUEST_TOKENS:,}")
        return kind, texts, ids

    def predict(self, inputs: list[tuple[str, list[str], list[list[int]]]]) -> list[Any]:
        ids = [i for _, _, group in inputs for i in group]
        vectors = self._embed(ids)
        out = []
        for (kind, texts, _), mine in zip(inputs, self.per_request(vectors, [len(group) for _, _, group in inputs])):
            if kind == "embed":
                out.append({"embeddings": mine.double().numpy().round(6).tolist()})
            else:
                scores = (mine[1:] @ mine[0]).tolist()
                order = sorted(range(len(scores)), key=lambda i: -scores[i])
                out.append(
                    {"ranked": [{"index": i, "text": texts[1 + i], "score": round(scores[i], 6)} for i in order]}
                )
        return out

    def _embed(self, ids: list[list[int]]) -> torch.Tensor:
        """One vector per token list, in order: sorted by length, in padded chunks of at most
        CHUNK_TOKENS (rows x width)."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        vectors: list[torch.Tensor | None] = [None] * len(ids)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= CHUNK_TOKENS:
                end += 1
            chunk = order[start:end]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                batch[row, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, : len(ids[i])] = 1
            for row, vector in zip(chunk, self.model(batch, mask)):
                vectors[row] = vector
            start = end
        return torch.stack(vectors)
