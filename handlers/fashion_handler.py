"""Handler for `fashion`: what piece of clothing is in a picture?

Request:  a PNG or JPEG body (any size or mode: converted to 28x28 grey), a .npy body of 28x28
          images (uint8 0-255 or floats 0-1), or
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

import io
import struct
import warnings
from typing import Any

import numpy as np
import torch
import torchship_signals
from PIL import Image, UnidentifiedImageError
from torchship_base_handler import NPY_MAGIC, BatchHandler, ItemError

MAX_PIXELS = 4_194_304  # 2048x2048: larger images (decompression bombs) are refused from their header
MAX_SIDE = 16_384  # a 1-pixel-high strip is refused too
MAX_IMAGES = 256
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
# The handler refuses more than MAX_PIXELS itself, from the header (with its own message); PIL's own
# guard (DecompressionBombError at twice its MAX_IMAGE_PIXELS, while opening) stays as a backstop
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 8
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # refused below, not warned


class FashionHandler(BatchHandler):
    max_body_bytes = 6 * 1024 * 1024

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

    def parse(self, payload: Any) -> tuple[np.ndarray, int]:
        if isinstance(payload, np.ndarray):  # a binary .npy body of 28x28 images
            if payload.dtype.kind not in "iuf":
                raise ItemError("the .npy array must hold numbers")
            return self._normalise(payload, "the .npy array"), 3
        if isinstance(payload, dict) and "_image_bytes" in payload:
            return self._decode_image(payload["_image_bytes"]), 3
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

    def _normalise(self, image: np.ndarray, what: str) -> np.ndarray:
        """28x28 images scaled to 0-1; the shape is checked before any conversion allocates."""
        if image.ndim == 4 and image.shape[1] == 1:
            image = image[:, 0]
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[1:] != (28, 28) or image.shape[0] == 0 or image.shape[0] > MAX_IMAGES:
            raise ItemError(f"{what} has shape {list(image.shape)}: expected 28x28 (at most {MAX_IMAGES} images)")
        image = image.astype(np.float64)
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 255:
            raise ItemError(f"{what} values must be finite, from 0 to 255 (or 0 to 1)")
        scale = 1.0 if image.max() <= 1.0 else 255.0
        return (image / scale).astype(np.float32)

    def _decode_image(self, data: bytes) -> np.ndarray:
        if not data.startswith(_MAGIC):
            raise ItemError("the body is neither JSON nor a PNG/JPEG image")
        try:
            # formats: no probing of every plugin; the size is checked from the header, before decoding
            with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
                if img.width * img.height > MAX_PIXELS or max(img.size) > MAX_SIDE:
                    raise ItemError(
                        f"the image has {img.width}x{img.height} pixels: at most {MAX_PIXELS:,} "
                        f"(and {MAX_SIDE:,} a side)"
                    )
                img.load()
                grey = img if img.mode == "L" else img.convert("L")
                if grey.size != (28, 28):
                    grey = grey.resize((28, 28), Image.Resampling.BILINEAR)
                return (np.asarray(grey, dtype=np.float32) / 255.0)[None]
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
            EOFError,
            IndexError,
            TypeError,
            struct.error,
            ZeroDivisionError,
        ) as exc:
            text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise ItemError(f"cannot read the image: {text}") from None

    def signals(self, model_input: tuple[np.ndarray, int]) -> dict[str, list]:
        """Drift signals (torchship_signals.fashion): each image's mean, spread and share of dark pixels."""
        return torchship_signals.fashion(model_input[0])

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
