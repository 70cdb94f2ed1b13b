"""Handler for `recommender`: which movies will this user like?

Request:  {"user_id": "196", "k": 10, "exclude_seen": true}
Answer:   {"user_id": "196", "fallback": null, "item_ids": ["..."],
           "items": [{"item_id", "title", "score"}, ...]}
An unknown user gets the most popular items instead, with "fallback": "popular" (not an error).
A missing user_id, a user_id over 128 characters (it is echoed back), or k that is not an integer
from 1 to 100, answers 400 for that request alone; a body over 64 KiB answers 413.
Known users of a batch are scored in one matrix product.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torchship_capture
import torchship_signals
from torchship_base_handler import BatchHandler, ItemError

MAX_K = 100
MAX_USER_ID = 128  # characters: the id is echoed back in the answer


class RecommenderHandler(BatchHandler):
    max_body_bytes = 64 * 1024

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        catalog = json.loads((self.model_dir / "catalog.json").read_text(encoding="utf-8"))
        self.users = {u: n for n, u in enumerate(catalog["users"])}
        self.items = catalog["items"]
        self.titles = catalog["titles"]
        self.seen = [torch.tensor(s, dtype=torch.long) for s in catalog["seen"]]
        self.popular = catalog["popular"]
        self.popularity = catalog["popularity"]
        # a request's drift signals depend on its user alone: each user's are worked out once, at their
        # first captured request (then a list lookup, not the user's whole history each time)
        self.user_signals: list[bytes | None] = [None] * len(self.seen)
        self.unknown_user_signals = torchship_capture.signals_json(torchship_signals.recommender(None, None))

    def parse(self, payload: Any) -> tuple[str, int | None, int, bool]:
        if not isinstance(payload, dict) or "user_id" not in payload:
            raise ItemError('missing field \'user_id\': expected {"user_id": "196", "k": 10, "exclude_seen": true}')
        user = payload["user_id"]
        if isinstance(user, bool) or not isinstance(user, (str, int)):
            raise ItemError("'user_id' must be a non-empty string or an integer")
        if isinstance(user, int) and not -(10**18) < user < 10**18 or isinstance(user, str) and len(user) > MAX_USER_ID:
            raise ItemError(f"'user_id' is too long: at most {MAX_USER_ID} characters")
        if str(user).strip() == "":
            raise ItemError("'user_id' must be a non-empty string or an integer")
        k = payload.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ItemError(f"'k' must be an integer from 1 to {MAX_K}")
        exclude = payload.get("exclude_seen", True)
        if not isinstance(exclude, bool):
            raise ItemError("'exclude_seen' must be true or false")
        user = str(user)
        return user, self.users.get(user), k, exclude

    def signals(self, model_input: tuple[str, int | None, int, bool]) -> bytes:
        """Drift signals (torchship_signals.recommender): whether the user is unknown, else how many items they
        rated in training and how popular those items are (as record JSON, kept per user)."""
        idx = model_input[1]
        if idx is None:
            return self.unknown_user_signals
        known = self.user_signals[idx]
        if known is None:
            seen = self.seen[idx].tolist()
            signals = torchship_signals.recommender(
                len(seen), torchship_signals.mean_log_popularity(seen, self.popularity)
            )
            known = self.user_signals[idx] = torchship_capture.signals_json(signals)
        return known

    def predict(self, inputs: list[tuple[str, int | None, int, bool]]) -> list[Any]:
        known = [idx for _, idx, _, _ in inputs if idx is not None]
        scores = self.model(torch.tensor(known, dtype=torch.long)) if known else None
        out, row = [], 0
        for user, idx, k, exclude in inputs:
            if idx is None:
                top = self.popular[:k]
                items = [self._item(i, float(self.popularity[i])) for i in top]
                out.append(
                    {"user_id": user, "fallback": "popular", "item_ids": [self.items[i] for i in top], "items": items}
                )
                continue
            s = scores[row].clone()
            row += 1
            if exclude and len(self.seen[idx]):
                s[self.seen[idx]] = float("-inf")
            values, top = torch.topk(s, k)
            items = [self._item(int(i), round(float(v), 6)) for v, i in zip(values, top)]
            out.append({"user_id": user, "fallback": None, "item_ids": [it["item_id"] for it in items], "items": items})
        return out

    def _item(self, i: int, score: float) -> dict:
        item = self.items[i]
        return {"item_id": item, "title": self.titles.get(item, item), "score": score}
