"""Handler for `sentiment`: is a piece of text positive or negative?

Request:  {"text": "a gripping, funny film"}
Answer:   {"label": "positive", "probabilities": {"negative": 0.08, "positive": 0.92}}
Empty text, a non-string, or text over the limit in vocab.json (5,000 characters) answers 400
for that request alone. The whole batch goes through one EmbeddingBag call.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from torchship_base_handler import BatchHandler, ItemError
from torchship_text import encode


class SentimentHandler(BatchHandler):
    def initialize(self, context: Any) -> None:
        super().initialize(context)
        vocab = json.loads((self.model_dir / "vocab.json").read_text(encoding="utf-8"))
        self.tokens = vocab["tokens"]
        self.labels = vocab["labels"]
        self.max_chars = int(vocab["max_chars"])

    def parse(self, payload: Any) -> list[int]:
        if not isinstance(payload, dict) or "text" not in payload:
            raise ItemError('missing field \'text\': expected {"text": "..."}')
        text = payload["text"]
        if not isinstance(text, str):
            raise ItemError(f"'text' must be a string, not {type(text).__name__}")
        if not text.strip():
            raise ItemError("'text' is empty")
        if len(text) > self.max_chars:
            raise ItemError(f"'text' has {len(text)} characters; at most {self.max_chars}")
        return encode(text, self.tokens)

    def predict(self, inputs: list[list[int]]) -> list[Any]:
        ids = torch.tensor([t for item in inputs for t in item], dtype=torch.long)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(i) for i in inputs])[:-1]]), dtype=torch.long)
        probs = torch.softmax(self.model(ids, offsets), dim=1).double().numpy().round(6)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {label: float(v) for label, v in zip(self.labels, p)}} for p in probs]
