"""Images for the image model: one decoding for the worker and for drift, which reads a captured request.

`decode` turns PNG/JPEG/GIF/BMP/WEBP bytes into 28x28 grey intensities (0-1); `normalise` checks and
scales arrays of 28x28 images. The fashion handler answers an ImageError as that request's 400;
`torchship_signals.from_input` derives a captured image's drift signals with the same code, where
drift is measured instead of in the worker. numpy and Pillow only (no torch).
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 4_194_304  # 2048x2048: larger images (decompression bombs) are refused from their header
MAX_SIDE = 16_384  # a 1-pixel-high strip is refused too
MAX_IMAGES = 256
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
# decode refuses more than MAX_PIXELS itself, from the header (with its own message); PIL's own guard
# (DecompressionBombError at twice its MAX_IMAGE_PIXELS, while opening) stays as a backstop
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 8
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # refused below, not warned


class Parsed(tuple):  # type: ignore[type-arg]
    """A parsed image request, (images, k) as any, that also says how many pixels the image had as sent
    (`pixels`: what decoding it cost). Here, not in the handler's module: TorchServe wants exactly one
    class in a handler file."""

    pixels: int = 0


class ImageError(Exception):
    """An image that cannot be read, or an array that is not 28x28 images: the request's 400."""


def normalise(image: np.ndarray, what: str) -> np.ndarray:
    """28x28 images (n x 28 x 28, float32) scaled to 0-1; the shape is checked before any conversion
    allocates."""
    if image.ndim == 4 and image.shape[1] == 1:
        image = image[:, 0]
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[1:] != (28, 28) or image.shape[0] == 0 or image.shape[0] > MAX_IMAGES:
        raise ImageError(f"{what} has shape {list(image.shape)}: expected 28x28 (at most {MAX_IMAGES} images)")
    image = image.astype(np.float64)
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 255:
        raise ImageError(f"{what} values must be finite, from 0 to 255 (or 0 to 1)")
    scale = 1.0 if image.max() <= 1.0 else 255.0
    return (image / scale).astype(np.float32)


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes as one 28x28 grey image (1 x 28 x 28, 0-1): any size or mode, converted."""
    return decode_sized(data, max_pixels)[0]


def decode_sized(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """`decode`, and the pixels of the image as sent (what decoding it cost); an image of more than
    `max_pixels` is refused from its header."""
    if not data.startswith(MAGIC):
        raise ImageError("the body is neither JSON nor a PNG/JPEG image")
    try:
        # formats: no probing of every plugin; the size is checked from the header, before decoding
        with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
            if img.width * img.height > max_pixels or max(img.size) > MAX_SIDE:
                raise ImageError(
                    f"the image has {img.width}x{img.height} pixels: at most {max_pixels:,} (and {MAX_SIDE:,} a side)"
                )
            img.load()
            grey = img if img.mode == "L" else img.convert("L")
            if grey.size != (28, 28):
                grey = grey.resize((28, 28), Image.Resampling.BILINEAR)
            return (np.asarray(grey, dtype=np.float32) / 255.0)[None], img.width * img.height
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
        raise ImageError(f"cannot read the image: {text}") from None
