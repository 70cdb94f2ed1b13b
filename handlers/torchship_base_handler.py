"""The base of torchship's handlers: one forward per batch, and a bad item never fails the rest.

TorchServe fails a whole batch when a handler raises. Here every item is parsed on its own; an
item that cannot be parsed gets its own 4xx answer (`{"code", "type", "message"}`, the shape of
TorchServe's own errors) through `context.set_response_status`, and the good items of the same
batch go through the model together. Weights come from safetensors only (never pickle), and each
worker uses one torch thread unless the archive's model-config says otherwise.

A subclass implements `parse` (one request's payload -> model input, or ItemError) and `predict`
(list of inputs -> list of JSON-able outputs, one forward for the whole list).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import torchship_models


class ItemError(Exception):
    """One item of a batch is invalid: answered with `code` and `message`, the rest go on."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "type": HTTPStatus(self.code).phrase.replace(" ", ""), "message": self.message}


class BatchHandler:
    """Batching-aware handler with per-item errors. See the module docstring."""

    def __init__(self) -> None:
        self.initialized = False
        self.model: torch.nn.Module | None = None
        self.meta: dict[str, Any] = {}
        self.model_dir: Path | None = None

    # -------------------------------------------------------------- start-up

    def initialize(self, context: Any) -> None:
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        torch.set_num_threads(int(config.get("threads", 1)))
        self.model_dir = Path(context.system_properties["model_dir"])
        self.meta = json.loads((self.model_dir / "meta.json").read_text(encoding="utf-8"))
        self.model = self.load_model(self.model_dir, context)
        self.model.eval()
        self.initialized = True

    def load_model(self, model_dir: Path, context: Any) -> torch.nn.Module:
        spec = self.meta["model"]
        model = torchship_models.build(spec["kind"], spec["architecture"])
        weights = context.manifest["model"]["serializedFile"]
        if not weights.endswith(".safetensors"):
            raise ValueError(f"refusing to load {weights}: torchship handlers load safetensors only")
        model.load_state_dict(load_file(str(model_dir / weights)))
        return model

    # -------------------------------------------------------------- requests

    def handle(self, data: list[dict], context: Any) -> list[Any]:
        results: list[Any] = [None] * len(data)
        parsed: list[tuple[int, Any]] = []
        for idx, request in enumerate(data):
            try:
                parsed.append((idx, self.parse(self.payload(request))))
            except ItemError as exc:
                results[idx] = self._answer(context, idx, exc.to_dict(), exc.code)
        if parsed:
            with torch.inference_mode():
                outputs = self.predict([item for _, item in parsed])
            for (idx, _), output in zip(parsed, outputs):
                results[idx] = self._answer(context, idx, output, 200)
        return results

    def payload(self, request: dict) -> Any:
        """The request's body, decoded from JSON when it came as bytes or text."""
        body = request.get("data", request.get("body")) if isinstance(request, dict) else None
        if body is None or body == b"" or body == "":
            raise ItemError("empty request body: send a JSON object")
        if isinstance(body, (bytes, bytearray)):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ItemError("body is not UTF-8 JSON") from None
        if isinstance(body, str):
            try:
                return json.loads(body)
            except ValueError as exc:
                raise ItemError(f"body is not valid JSON: {exc}") from None
        return body

    def parse(self, payload: Any) -> Any:
        raise NotImplementedError

    def predict(self, inputs: list[Any]) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def _answer(context: Any, idx: int, body: Any, code: int) -> bytes:
        if code != 200:
            context.set_response_status(code, HTTPStatus(code).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")

