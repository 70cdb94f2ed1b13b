"""Handler for `embedder` (all-MiniLM-L6-v2): sentence embeddings and semantic ranking.

Request:  {"texts": ["...", ...]}                  -> {"embeddings": [[384 floats], ...]} (unit length)
          {"query": "...", "candidates": [...]}      -> {"ranked": [{"index", "text", "score"}, ...]} best first
At most 64 texts (or candidates) per request and 2,000 characters each (longer inputs are cut at
256 tokens). Every text of every request in a batch goes through one padded forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer

from torchship_base_handler import BatchHandler, ItemError

MAX_TEXTS = 64
MAX_CHARS = 2000


class EmbedderHandler(BatchHandler):
    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(self.meta.get("max_tokens", 256)))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of each batch

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

    def parse(self, payload: Any) -> tuple[str, list[str]]:
        if isinstance(payload, dict) and "texts" in payload:
            return "embed", self._texts(payload["texts"], "texts")
        if isinstance(payload, dict) and "query" in payload:
            query = self._text(payload["query"], "query")
            return "rank", [query, *self._texts(payload.get("candidates"), "candidates")]
        raise ItemError('expected {"texts": [...]} or {"query": "...", "candidates": [...]}')

    def predict(self, inputs: list[tuple[str, list[str]]]) -> list[Any]:
        texts = [t for _, group in inputs for t in group]
        encoded = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
        vectors = self.model(ids, mask)
        out, start = [], 0
        for kind, group in inputs:
            mine = vectors[start:start + len(group)]
            start += len(group)
            if kind == "embed":
                out.append({"embeddings": mine.double().numpy().round(6).tolist()})
            else:
                scores = (mine[1:] @ mine[0]).tolist()
                order = sorted(range(len(scores)), key=lambda i: -scores[i])
                out.append({"ranked": [{"index": i, "text": group[1 + i], "score": round(scores[i], 6)}
                                       for i in order]})
        return out
