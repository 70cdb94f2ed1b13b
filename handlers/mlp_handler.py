"""Handler for `mlp`, the mission's Linear 100->50->10 classifier.

Request:  {"data": [100 numbers]}              -> {"class_id": 3, "probabilities": [10 floats]}
          {"data": [[100 numbers], ...]}       -> a list of those, one per row (at most 1024 rows)
A missing field, wrong length, non-number, NaN or infinity answers 400 for that request alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchship_base_handler import BatchHandler, ItemError

MAX_ROWS = 1024


class MLPHandler(BatchHandler):
    def parse(self, payload: Any) -> tuple[np.ndarray, bool]:
        width = int(self.meta["model"]["architecture"]["in_features"])
        usage = f'expected {{"data": [{width} numbers]}} or {{"data": [[{width} numbers], ...]}}'
        if not isinstance(payload, dict) or "data" not in payload:
            raise ItemError(f"missing field 'data': {usage}")
        try:
            rows = np.asarray(payload["data"])
        except (ValueError, TypeError):
            raise ItemError(f"'data' is not a rectangular list of numbers: {usage}") from None
        if rows.dtype.kind not in "iuf":
            raise ItemError(f"'data' must hold only numbers: {usage}")
        single = rows.ndim == 1
        if single:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != width or rows.shape[0] == 0:
            raise ItemError(f"'data' has shape {list(np.shape(payload['data']))}: {usage}")
        if rows.shape[0] > MAX_ROWS:
            raise ItemError(f"'data' has {rows.shape[0]} rows; at most {MAX_ROWS} per request")
        with np.errstate(over="ignore"):
            rows = rows.astype(np.float32)
        if not np.isfinite(rows).all():
            raise ItemError("'data' holds NaN, infinity, or a number too large for float32")
        return rows, single

    def predict(self, inputs: list[tuple[np.ndarray, bool]]) -> list[Any]:
        batch = torch.from_numpy(np.concatenate([rows for rows, _ in inputs]))
        probs = torch.softmax(self.model(batch), dim=1)
        classes = probs.argmax(dim=1).tolist()
        probs = probs.double().numpy().round(6).tolist()
        out, start = [], 0
        for rows, single in inputs:
            answers = [{"class_id": classes[i], "probabilities": probs[i]} for i in range(start, start + len(rows))]
            start += len(rows)
            out.append(answers[0] if single else answers)
        return out
