"""Handler for `fashion`: what piece of clothing is in a picture?

Request:  a PNG, JPEG, GIF, BMP or WEBP body (any size or mode: converted to 28x28 grey), a .npy
          body of 28x28 images (uint8 0-255 or floats 0-1), or
          {"image": 28x28 numbers (0-255, or 0-1), "k": 3}
Answer:   {"label": "Ankle boot", "class_id": 9, "predictions": [{"label", "class_id", "score"}, ... top k],
           "probabilities": [10 floats]}
Fashion-MNIST pictures are light clothes on a black background; photos of dark clothes on white
need inverting first. Corrupt image bytes, a wrong shape or a bad k answer 400 for that request
alone; so does an image over 2048x2048 pixels (4,194,304), refused from its header before
decoding, and more than 256 images. A body over 6 MiB answers 413. Open Inference Protocol: one
input of shape [28, 28], [n, 28, 28] or [n, 1, 28, 28].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchship_image
import torchship_signals
from torchship_base_handler import NPY_MAGIC, BatchHandler, ItemError


class FashionHandler(BatchHandler):
    max_body_bytes = 6 * 1024 * 1024
    signals_from_input = True  # drift decodes the recorded image itself (torchship_signals.from_input)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.labels = self.meta["labels"]

    def payload(self, request: dict, headers: dict) -> tuple[Any, bytes]:
        body = request.get("data", request.get("body")) if isinstance(request, dict) else None
        if (
            isinstance(body, (bytes, bytearray))
            and bytes(body[:64]).lstrip()[:1] not in (b"{", b"[", b"")
            and bytes(body[:6]) != NPY_MAGIC
        ):
            return {"_image_bytes": bytes(body)}, b""
        return super().payload(request, headers)

    def captured_body(self, payload: Any) -> Any:
        """An image is recorded as its bytes (base64 in the record), which replay sends again."""
        return payload["_image_bytes"] if isinstance(payload, dict) and "_image_bytes" in payload else payload

    def parse(self, payload: Any) -> tuple[np.ndarray, int]:
        if isinstance(payload, np.ndarray):  # a binary .npy body of 28x28 images
            if payload.dtype.kind not in "iuf":
                raise ItemError("the .npy array must hold numbers")
            return self._normalise(payload, "the .npy array"), 3
        if isinstance(payload, dict) and "_image_bytes" in payload:
            try:
                image, pixels = torchship_image.decode_sized(payload["_image_bytes"])
            except torchship_image.ImageError as exc:
                raise ItemError(str(exc)) from None
            parsed = torchship_image.Parsed((image, 3))
            parsed.pixels = pixels  # the image's size as sent (input_has_signals)
            return parsed
        if not isinstance(payload, dict) or "image" not in payload:
            raise ItemError('expected a PNG/JPEG body, or {"image": 28x28 numbers, "k": 3}')
        k = payload.get("k", 3)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(self.labels):
            raise ItemError(f"'k' must be an integer from 1 to {len(self.labels)}")
        try:
            image = np.asarray(payload["image"], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ItemError("'image' must be 28 rows of 28 numbers") from None
        return self._normalise(image, "'image'"), k

    def parse_v2(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
        if len(tensors) != 1:
            raise ItemError("expected one input of shape [28, 28], [n, 28, 28] or [n, 1, 28, 28]")
        [(name, array)] = tensors.items()
        if array.dtype.kind not in "iuf":
            raise ItemError(f"input {name!r} must hold numbers")
        return self._normalise(array, f"input {name!r}"), len(self.labels)

    @staticmethod
    def _normalise(image: np.ndarray, what: str) -> np.ndarray:
        try:
            return torchship_image.normalise(image, what)
        except torchship_image.ImageError as exc:
            raise ItemError(str(exc)) from None

    def signals(self, model_input: tuple[np.ndarray, int]) -> dict[str, list]:
        """Drift signals (torchship_signals.fashion): each image's mean, spread and share of dark pixels."""
        return torchship_signals.fashion(model_input[0])

    def input_has_signals(self, model_input: tuple[np.ndarray, int]) -> bool:
        """Drift decodes a recorded image again at every measurement: only a small one (a photo's signals
        are worked out here, where it was decoded anyway)."""
        return getattr(model_input, "pixels", 0) <= torchship_signals.DERIVED_MAX_PIXELS

    def predict(self, inputs: list[tuple[np.ndarray, int]]) -> list[Any]:
        batch = torch.from_numpy(np.concatenate([images for images, _ in inputs]))[:, None]
        probs = torch.softmax(self.model(batch), dim=1).double().numpy()
        sizes = [len(images) for images, _ in inputs]
        ks = [k for (_, k), size in zip(inputs, sizes) for _ in range(size)]  # each image's request's k
        answers = [self._answer_for(p, k) for p, k in zip(probs, ks)]
        return self.per_request(answers, sizes, [size == 1 for size in sizes])

    def _answer_for(self, p: np.ndarray, k: int) -> dict:
        top = np.argsort(-p, kind="stable")[:k]
        preds = [{"label": self.labels[c], "class_id": int(c), "score": round(float(p[c]), 6)} for c in top]
        return {
            "label": preds[0]["label"],
            "class_id": preds[0]["class_id"],
            "predictions": preds,
            "probabilities": [round(float(v), 6) for v in p],
        }

    def v2_outputs(self, output: Any) -> list[tuple[str, np.ndarray]]:
        answers = output if isinstance(output, list) else [output]
        return [
            ("class_id", np.array([a["class_id"] for a in answers], dtype=np.int64)),
            ("probabilities", np.array([a["probabilities"] for a in answers], dtype=np.float32)),
        ]
