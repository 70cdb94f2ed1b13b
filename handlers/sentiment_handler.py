"""Handler for `sentiment`: is a piece of text positive or negative?

Request:  {"text": "a gripping, funny film"}
Answer:   {"label": "positive", "probabilities": {"negative": 0.08, "positive": 0.92}}
Request:  {"texts": ["...", ...]} (at most 256)   -> a list of those answers, in order
Empty text, a non-string, or text over the limit in vocab.json (5,000 characters) answers 400
for that request alone; a body over 6 MiB answers 413. Every text of the whole batch goes through one EmbeddingBag call.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import torchship_signals
from torchship_base_handler import BatchHandler, ItemError
from torchship_text import encode

MAX_TEXTS = 256


class SentimentHandler(BatchHandler):
    max_body_bytes = 6 * 1024 * 1024  # 256 texts of 5,000 characters
    # drift reads the recorded texts with the archive's vocab.json (torchship_signals.from_input)
    signals_from_input = True

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        vocab = json.loads((self.model_dir / "vocab.json").read_text(encoding="utf-8"))
        self.tokens = vocab["tokens"]
        self.labels = vocab["labels"]
        self.max_chars = int(vocab["max_chars"])

    def parse(self, payload: Any) -> tuple[list[list[int]], bool]:
        """(token ids of each text, whether the request sent a list of texts)."""
        if isinstance(payload, dict) and "texts" in payload:
            texts = payload["texts"]
            if not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS:
                raise ItemError(f"'texts' must be a list of 1 to {MAX_TEXTS} strings")
            return [self._encode(t, f"'texts'[{i}]") for i, t in enumerate(texts)], True
        if not isinstance(payload, dict) or "text" not in payload:
            raise ItemError('missing field \'text\': expected {"text": "..."} or {"texts": ["...", ...]}')
        return [self._encode(payload["text"], "'text'")], False

    def _encode(self, text: Any, what: str) -> list[int]:
        if not isinstance(text, str):
            raise ItemError(f"{what} must be a string, not {type(text).__name__}")
        if not text.strip():
            raise ItemError(f"{what} is empty")
        if len(text) > self.max_chars:
            raise ItemError(f"{what} has {len(text)} characters; at most {self.max_chars}")
        # the ids keep their text: its drift signals (words, out-of-vocabulary share) are not in the ids
        # (encode leaves unknown tokens out), and are worked out only for a captured request
        ids = torchship_signals.TextIds(encode(text, self.tokens))
        ids.text = text
        return ids

    def signals(self, model_input: tuple[list[list[int]], bool]) -> dict[str, list] | bytes:
        """Drift signals (torchship_signals.sentiment): each text's length in words and out-of-vocabulary share."""
        items = model_input[0]
        if len(items) == 1:  # one text: its record JSON at once
            words = torchship_signals.words(getattr(items[0], "text", ""))
            return torchship_signals.one_text_json(*torchship_signals.text(words, self.tokens))
        texts = [getattr(items[i], "text", "") for i in torchship_signals.picked(len(items))]
        return torchship_signals.sentiment(
            torchship_signals.text(torchship_signals.words(t), self.tokens) for t in texts
        )

    def predict(self, inputs: list[tuple[list[list[int]], bool]]) -> list[Any]:
        texts = [ids for item, _ in inputs for ids in item]
        ids = torch.tensor([t for item in texts for t in item], dtype=torch.long)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(i) for i in texts])[:-1]]), dtype=torch.long)
        probs = torch.softmax(self.model(ids, offsets), dim=1).double().numpy().round(6)
        answers = [
            {
                "label": self.labels[int(p.argmax())],
                "probabilities": {label: float(v) for label, v in zip(self.labels, p)},
            }
            for p in probs
        ]
        return self.per_request(answers, [len(item) for item, _ in inputs], [not many for _, many in inputs])
