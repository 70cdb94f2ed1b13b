"""Text to token ids for the text models: the same code in training and in the worker.

Lower-cased words (letters, digits, inner apostrophes) and their adjacent pairs ("not_funny"),
looked up in a vocabulary built from the training data and packed in the archive as vocab.json.
Id 0 is kept for tokens the vocabulary does not know.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
UNKNOWN = 0


def tokenize(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]


def encode(text: str, vocab: dict[str, int]) -> list[int]:
    ids = [vocab.get(t, UNKNOWN) for t in tokenize(text)]
    known = [i for i in ids if i != UNKNOWN]
    return known or [UNKNOWN]
