"""Handler for `mlp`, the mission's Linear 100->50->10 classifier.

Request:  {"data": [100 numbers]}              -> {"class_id": 3, "probabilities": [10 floats]}
          {"data": [[100 numbers], ...]}       -> a list of those, one per row (at most 1024 rows)
          or the same as a binary .npy body (Content-Type application/x-npy): no JSON to decode.
A missing field, wrong length, non-number, NaN or infinity answers 400 for that request alone;
a body over 4 MiB answers 413.

Open Inference Protocol (POST /v2/models/mlp/infer): one numeric input of shape [100] or [n, 100]
-> outputs `class_id` (INT64, [n]) and `probabilities` (FP32, [n, 10]).
Explanations (POST /explanations/mlp): {"class_id", "attributions": [100 floats]} per row,
gradient x input for the predicted class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchship_signals
from torchship_base_handler import BatchHandler, ItemError

MAX_ROWS = 1024


class MLPHandler(BatchHandler):
    max_body_bytes = 4 * 1024 * 1024  # 1,024 rows of 100 numbers as JSON fit in about 2.3 MB

    @property
    def width(self) -> int:
        return int(self.meta["model"]["architecture"]["in_features"])

    def parse(self, payload: Any) -> tuple[np.ndarray, bool]:
        usage = f'expected {{"data": [{self.width} numbers]}} or {{"data": [[{self.width} numbers], ...]}}'
        if isinstance(payload, np.ndarray):  # a binary .npy body: shape [100] or [n, 100]
            return self._rows(payload, "the .npy array", usage)
        if not isinstance(payload, dict) or "data" not in payload:
            raise ItemError(f"missing field 'data': {usage}")
        try:
            rows = np.asarray(payload["data"])
        except (ValueError, TypeError):
            raise ItemError(f"'data' is not a rectangular list of numbers: {usage}") from None
        return self._rows(rows, "'data'", usage)

    def parse_v2(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
        usage = f"expected one input of shape [{self.width}] or [n, {self.width}]"
        if len(tensors) != 1:
            raise ItemError(f"{len(tensors)} inputs given: {usage}")
        [(name, rows)] = tensors.items()
        return self._rows(rows, f"input {name!r}", usage)

    def _rows(self, rows: np.ndarray, what: str, usage: str) -> tuple[np.ndarray, bool]:
        if rows.dtype.kind not in "iuf":
            raise ItemError(f"{what} must hold only numbers: {usage}")
        single = rows.ndim == 1
        if single:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.width or rows.shape[0] == 0:
            shape = list(rows.shape[1:] if single else rows.shape)
            raise ItemError(f"{what} has shape {shape}: {usage}")
        if rows.shape[0] > MAX_ROWS:
            raise ItemError(f"{what} has {rows.shape[0]} rows; at most {MAX_ROWS} per request")
        with np.errstate(over="ignore"):
            rows = rows.astype(np.float32)
        if not np.isfinite(rows).all():
            raise ItemError(f"{what} holds NaN, infinity, or a number too large for float32")
        return rows, single

    signals_from_input = True  # the features are in the captured input: drift reads them there
    signals_reveal_input = ("data", "inputs")  # they are the features: see the base handler

    def signals(self, model_input: tuple[np.ndarray, bool]) -> dict[str, list]:
        """Drift signals (torchship_signals.mlp): each feature of the request's rows, and each row's RMS."""
        return torchship_signals.mlp(model_input[0])

    def predict(self, inputs: list[tuple[np.ndarray, bool]]) -> list[Any]:
        batch = torch.from_numpy(np.concatenate([rows for rows, _ in inputs]))
        probs = torch.softmax(self.model(batch), dim=1)
        classes = probs.argmax(dim=1).tolist()
        probs = probs.double().numpy().round(6).tolist()
        return self._per_request(inputs, [{"class_id": c, "probabilities": p} for c, p in zip(classes, probs)])

    def explain(self, inputs: list[tuple[np.ndarray, bool]]) -> list[Any]:
        batch = torch.from_numpy(np.concatenate([rows for rows, _ in inputs])).requires_grad_(True)
        logits = self.model(batch)
        classes = logits.argmax(dim=1)
        logits.gather(1, classes[:, None]).sum().backward()
        attributions = (batch.grad * batch).detach().double().numpy().round(6).tolist()
        return self._per_request(
            inputs, [{"class_id": c, "attributions": a} for c, a in zip(classes.tolist(), attributions)]
        )

    def v2_outputs(self, output: Any) -> list[tuple[str, np.ndarray]]:
        answers = output if isinstance(output, list) else [output]
        return [
            ("class_id", np.array([a["class_id"] for a in answers], dtype=np.int64)),
            ("probabilities", np.array([a["probabilities"] for a in answers], dtype=np.float32)),
        ]

    def _per_request(self, inputs: list[tuple[np.ndarray, bool]], answers: list[dict]) -> list[Any]:
        """One answer per row of the batch -> one answer per request (a list unless it sent one row)."""
        return self.per_request(answers, [len(rows) for rows, _ in inputs], [single for _, single in inputs])
