"""Loaders for the example data sets. Each takes a path, so users can point them at their own copy.

`scripts/fetch_data.py` puts the data in data/; a missing file raises a TrainingError with one
line on how to get it.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TrainingError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
_FETCH = "run `.venv/bin/python scripts/fetch_data.py` (make demo and make test run it)"


def _need(path: Path) -> Path:
    if not path.exists():
        raise TrainingError(f"data not found: {path}: {_FETCH}")
    return path


# ---------------------------------------------------------------- sentiment


def load_rotten_tomatoes(path: Path | None = None) -> tuple[list[str], np.ndarray]:
    """Review snippets and labels (1 fresh, 0 rotten); plot summaries and duplicates dropped."""
    path = _need(path or DATA / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")
    csv.field_size_limit(1 << 24)
    texts, labels, seen = [], [], set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            category, text = row.get("category"), (row.get("text") or "").strip()
            if category not in ("fresh", "rotten") or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(1 if category == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------- fashion

FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """A standard IDX file (optionally gzipped) as a numpy array."""
    raw = _need(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise TrainingError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise TrainingError(f"{path} is truncated")
    return data.reshape(shape)


def load_fashion(folder: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST: (train images, train labels, test images, test labels), images uint8 28x28."""
    folder = folder or DATA / "fashion"
    return (
        read_idx(folder / "train-images-idx3-ubyte.gz"),
        read_idx(folder / "train-labels-idx1-ubyte.gz"),
        read_idx(folder / "t10k-images-idx3-ubyte.gz"),
        read_idx(folder / "t10k-labels-idx1-ubyte.gz"),
    )


# ---------------------------------------------------------------- recommender


@dataclass(frozen=True)
class MovieLens:
    users: np.ndarray  # per interaction, raw user ids (str)
    items: np.ndarray  # per interaction, raw item ids (str)
    timestamps: np.ndarray
    titles: dict[str, str]


def _atomic(path: Path) -> list[list[str]]:
    with open(_need(path), encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(io.StringIO(f.read()), delimiter="\t"))
    return rows[1:]  # the header names the fields (RecBole's atomic files)


def load_movielens(folder: Path | None = None) -> MovieLens:
    folder = folder or DATA / "recommender"
    inter = _atomic(folder / "ml-100k.inter")
    titles = {r[0]: f"{r[1]} ({r[2]})" if len(r) > 2 and r[2] else r[1] for r in _atomic(folder / "ml-100k.item")}
    return MovieLens(
        np.asarray([r[0] for r in inter]),
        np.asarray([r[1] for r in inter]),
        np.asarray([float(r[3]) for r in inter]),
        titles,
    )
