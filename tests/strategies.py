"""Malformed requests for each example model, as hypothesis strategies.

Used by the fuzzing tests and by the reliability report. Every body a strategy draws is invalid
for that model (a 4xx is the only right answer); `GOOD` gives one valid body per model.
Needs the `hypothesis` package (a test dependency).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["malformed", "GOOD", "as_body"]

_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), _FLOAT, st.text(max_size=20))
_JSON_ANY = st.recursive(
    _SCALAR,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=12,
)


def as_body(value: Any) -> bytes:
    """JSON text (NaN and Infinity written as Python writes them), or bytes as they are."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return json.dumps(value, allow_nan=True).encode()


def _common() -> st.SearchStrategy:
    """Invalid for every model: broken JSON, empty bodies, non-objects, unicode noise."""
    broken = st.text(max_size=40).map(lambda t: ("{" + t).encode("utf-8", "surrogatepass"))
    top_level = st.one_of(_SCALAR, st.lists(_JSON_ANY, max_size=4)).map(as_body)
    return st.one_of(
        broken,
        st.just(b""),
        st.just(b"{}"),
        top_level,
        st.text(min_size=1, max_size=30).map(lambda t: json.dumps(t).encode()),
    )


def _mlp() -> st.SearchStrategy:
    wrong_length = st.lists(st.floats(-10, 10), max_size=150).filter(lambda v: len(v) != 100)
    not_numbers = st.lists(
        st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)),
        min_size=100,
        max_size=100,
    )
    non_finite = st.tuples(
        st.lists(st.floats(-1, 1), min_size=99, max_size=99),
        st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1e39]),
    ).map(lambda t: t[0] + [t[1]])
    ragged = st.lists(st.lists(st.floats(-1, 1), min_size=99, max_size=101), min_size=2, max_size=3).filter(
        lambda rows: any(len(r) != 100 for r in rows)
    )
    data = st.one_of(wrong_length, not_numbers, non_finite, ragged, _SCALAR.filter(lambda v: not isinstance(v, list)))
    missing = st.dictionaries(st.text(max_size=5).filter(lambda k: k != "data"), _JSON_ANY, max_size=3)
    return st.one_of(data.map(lambda d: as_body({"data": d})), missing.map(as_body))


def _sentiment() -> st.SearchStrategy:
    not_text = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        _FLOAT,
        st.lists(st.text(max_size=5), max_size=3),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    )
    blank = st.text(alphabet=" \t\n\r", max_size=20)
    too_long = st.integers(5001, 20000).map(lambda n: "a" * n)
    missing = st.dictionaries(st.text(max_size=5).filter(lambda k: k != "text"), _JSON_ANY, max_size=3)
    return st.one_of(st.one_of(not_text, blank, too_long).map(lambda t: as_body({"text": t})), missing.map(as_body))


def _image_noise() -> st.SearchStrategy:
    magic = st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM"])
    return st.one_of(
        st.tuples(magic, st.binary(max_size=200)).map(lambda t: t[0] + t[1]),
        st.binary(min_size=1, max_size=200).filter(lambda b: b[:1] not in (b"{", b"[", b" ", b"\n")),
    )


def _fashion() -> st.SearchStrategy:
    wrong_shape = st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=30), min_size=1, max_size=30).filter(
        lambda img: len(img) != 28 or any(len(r) != 28 for r in img)
    )
    bad_value = st.sampled_from([-1, 256, 1e9, float("nan"), float("inf")]).map(lambda v: [[v] * 28] * 28)
    bad_k = st.one_of(st.integers(max_value=0), st.integers(min_value=11), st.text(max_size=3), st.booleans(), _FLOAT)
    images = st.one_of(wrong_shape, bad_value, _SCALAR).map(lambda img: as_body({"image": img}))
    ks = bad_k.map(lambda k: as_body({"image": [[0] * 28] * 28, "k": k}))
    return st.one_of(images, ks, _image_noise())


def _recommender() -> st.SearchStrategy:
    bad_user = st.one_of(
        st.none(),
        st.booleans(),
        _FLOAT,
        st.lists(st.integers(), max_size=2),
        st.just(""),
        st.text(alphabet=" ", min_size=1, max_size=3),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    )
    bad_k = st.one_of(st.integers(max_value=0), st.integers(min_value=101), st.text(max_size=3), st.booleans(), _FLOAT)
    bad_flag = st.one_of(st.integers(), st.text(max_size=4), st.none())
    return st.one_of(
        bad_user.map(lambda u: as_body({"user_id": u})),
        bad_k.map(lambda k: as_body({"user_id": "196", "k": k})),
        bad_flag.map(lambda f: as_body({"user_id": "196", "exclude_seen": f})),
        st.dictionaries(st.text(max_size=5).filter(lambda k: k != "user_id"), _JSON_ANY, max_size=3).map(as_body),
    )


# embedder and textgen: wrong texts and out-of-bounds generation parameters
_TEXTS_BAD = st.one_of(
    st.just([]),
    st.lists(st.just("a"), min_size=65, max_size=70),
    st.lists(st.just("x" * 2001), min_size=1, max_size=2),
    st.lists(st.one_of(st.none(), st.integers(), st.booleans(), st.just(""), st.just("  ")), min_size=1, max_size=3),
    st.text(max_size=5),
    st.integers(),
    st.none(),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
)


def _embedder() -> st.SearchStrategy:
    return st.one_of(
        _TEXTS_BAD.map(lambda t: as_body({"texts": t})),
        _TEXTS_BAD.map(lambda t: as_body({"query": "q", "candidates": t})),
        st.one_of(st.none(), st.integers(), st.just(""), st.just("x" * 2001)).map(
            lambda q: as_body({"query": q, "candidates": ["a"]})
        ),
        st.dictionaries(
            st.text(max_size=5).filter(lambda k: k not in ("texts", "query")), st.integers(), max_size=3
        ).map(as_body),
    )


def _textgen() -> st.SearchStrategy:
    return st.one_of(
        st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2), st.just("p" * 501)).map(
            lambda p: as_body({"prompt": p})
        ),
        st.one_of(
            st.integers(max_value=0), st.integers(min_value=501), st.floats(), st.booleans(), st.text(max_size=3)
        ).map(lambda n: as_body({"prompt": "A", "max_new_tokens": n})),
        st.one_of(
            st.floats(min_value=1e-300, max_value=0.0099),
            st.floats(min_value=2.0001),
            st.floats(max_value=-1e-9),
            st.just(float("nan")),
            st.booleans(),
            st.text(max_size=3),
        ).map(lambda t: as_body({"prompt": "A", "temperature": t})),
        st.one_of(st.integers(max_value=0), st.integers(min_value=10**4), st.floats(), st.text(max_size=3)).map(
            lambda k: as_body({"prompt": "A", "top_k": k})
        ),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), st.floats(), st.text(max_size=3)).map(
            lambda s: as_body({"prompt": "A", "seed": s})
        ),
        st.dictionaries(st.text(max_size=5).filter(lambda k: k != "prompt"), st.integers(), max_size=3).map(as_body),
    )


_BY_MODEL = {
    "mlp": _mlp,
    "sentiment": _sentiment,
    "fashion": _fashion,
    "recommender": _recommender,
    "embedder": _embedder,
    "textgen": _textgen,
}

GOOD: dict[str, bytes] = {
    "mlp": as_body({"data": [0.25] * 100}),
    "sentiment": as_body({"text": "a gripping, funny and moving film"}),
    "fashion": as_body({"image": [[0] * 10 + [200] * 8 + [0] * 10] * 28, "k": 3}),
    "recommender": as_body({"user_id": "196", "k": 5}),
}


def malformed(model: str) -> st.SearchStrategy:
    """Bodies that `model` must answer with a 4xx."""
    return st.one_of(_common(), _BY_MODEL[model]())
