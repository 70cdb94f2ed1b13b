"""Drift signals: what the example models' traffic is measured on, one definition for training and serving.

Training records a *reference* of each signal on its held-out data in the checkpoint's meta.json
(`reference`); the same signals of each captured request are derived where drift is measured, from the
input the capture recorded (`from_input`, with the archive's vocab.json for sentiment: the request pays
nothing for them), or by the handler of a served version (`BatchHandler.signals`, recorded in the
capture as `signals`: a model of your own, or a request whose input the record does not hold whole);
`torchship drift` compares them with the reference.

A request's signals: ``{name: [value per item]}``, an item being a row (mlp), a text (sentiment) or an
image (fashion) of the request; a request of many items contributes at most ``MAX_ITEMS`` of them,
evenly spaced, so a record stays small. Numbers are rounded to 4 significant digits.

- mlp: every feature ``x0`` .. ``x99`` (the per-feature distributions) and ``rms``, the row's root
  mean square (one number that moves when any scale does).
- sentiment: ``tokens`` (words in the text) and ``oov`` (the share of those words the run's
  vocabulary does not know).
- fashion: ``mean`` and ``std`` of the pixel intensities (0-1), ``dark`` (the share of pixels under 0.1:
  Fashion-MNIST is light clothes on black).
- recommender: ``unknown_user`` (categorical: 1 when the user is not in the catalog), and for known
  users ``user_activity`` (how many items the user rated in training: the user's popularity) and
  ``item_popularity`` (the mean log popularity of the items the user rated: how mainstream they are).

The answer the caller got gives the prediction signals (`predictions`): ``pred_class`` (categorical)
and ``pred_score`` (the predicted class's probability) for the classifiers (an answer with
``class_id`` and a list of ``probabilities``, or a ``label`` and a mapping of ``probabilities``, as
`torchship init`'s template answers), ``top_score`` (the first item's score, for known users) for the
recommender.

A model of your own: its handler's ``signals`` returns what it measures of one request (``columns`` for
rows of features), and its training records the same signals of its held-out data with
``torchship.checkpoint.save(..., drift_signals=...)``.

numpy only (no torch): the drift command imports this without loading a model (and Pillow, through
torchship_image, for a captured image).
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MAX_ITEMS = 8  # items of one request recorded as signals
DARK = 0.1  # a pixel under this intensity (0-1) is dark
BINS = 10  # a continuous signal's reference histogram: deciles of the held-out values
CATEGORICAL = frozenset({"pred_class", "unknown_user"})

Signals = dict[str, list[Any]]


class TextIds(list):  # type: ignore[type-arg]
    """A text's token ids, and the text (its drift signals are not in the ids). Here, not in the
    handler's module: TorchServe wants exactly one class in a handler file."""

    text: str


def _r(v: float) -> float:
    return float(f"{float(v):.4g}")


def _rs(values: Any) -> list[Any]:
    """Values (any shape) to 4 significant digits, as `_r` gives them, at numpy speed (a row of 100
    features one by one cost a captured request more than the rest of its capture)."""
    a = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log10(np.abs(a)))
    exponent = np.where(np.isfinite(exponent), exponent, 0.0)
    scale = 10.0 ** (3 - exponent)
    out = np.round(a * scale) / scale
    return np.where(np.isfinite(a), out, a).tolist()


def picked(n: int, cap: bool = True) -> list[int]:
    """Which of a request's `n` items its signals describe: all, or MAX_ITEMS evenly spaced (`cap`;
    training describes all of its held-out data at once)."""
    if n <= MAX_ITEMS or not cap:
        return list(range(n))
    return sorted({round(i * (n - 1) / (MAX_ITEMS - 1)) for i in range(MAX_ITEMS)})


# ------------------------------------------------------------------ per model, from a parsed input


def _picked_rows(rows: Any, cap: bool) -> np.ndarray:
    """Rows of features as float64 (n x width; one row made a row of one), the `picked` ones only."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[None]
    return rows[picked(len(rows), cap)]


def mlp(rows: np.ndarray, cap: bool = True) -> Signals:
    """Rows of features (n x width): each feature, and each row's root mean square."""
    rows = _picked_rows(rows, cap)
    return {"rms": _rs(np.sqrt((rows**2).mean(axis=1))), **_named_columns(rows, "x")}


def columns(rows: Any, prefix: str = "f", cap: bool = True) -> Signals:
    """Rows of features (n x width, or one row): each feature's values, named `prefix`0, `prefix`1, ...
    The drift signals of a model of your own that takes rows of numbers (`torchship init`'s template)."""
    return _named_columns(_picked_rows(rows, cap), prefix)


def _named_columns(rows: np.ndarray, prefix: str) -> Signals:
    return {f"{prefix}{j}": column for j, column in enumerate(_rs(rows.T))}


def mlp_rows(model_input: Any) -> np.ndarray | None:
    """The feature rows of a captured mlp input as its handler reads them, float32 as the model saw them:
    {"data": a row or rows} (any other field ignored), an .npy body as the capture records it (exactly
    {"npy": shape, "data": values}: the worker records the signals of a JSON body that looks like one), or
    an Open Inference Protocol request's one input, typed as declared. None when they cannot be read (a
    redacted field, another form, values the handler would have refused)."""
    try:
        if _oip().is_v2(model_input):  # the handler reads a v2 request's inputs alone
            rows = _v2_tensor(model_input)
        elif isinstance(model_input, dict) and set(model_input) == {"npy", "data"}:
            rows = np.asarray(model_input["data"]).reshape([int(d) for d in model_input["npy"]])
        elif isinstance(model_input, dict) and "data" in model_input:
            rows = np.asarray(model_input["data"])
        else:
            return None
        if rows.dtype.kind not in "iuf":
            return None
        with np.errstate(over="ignore"):
            rows = rows.astype(np.float32)  # as the handler casts them
    except (TypeError, ValueError, OverflowError):
        return None
    if rows.ndim == 1:
        rows = rows[None]
    return rows if rows.ndim == 2 and rows.size and np.isfinite(rows).all() else None


def _oip() -> Any:
    try:  # a worker imports each archive file as a top-level module
        import torchship_oip
    except ModuleNotFoundError:  # the drift command, the library
        from torchship.handlers import torchship_oip
    return torchship_oip


def _v2_tensor(request: dict[str, Any]) -> np.ndarray:
    """The one input tensor of a v2 request (JSON data), typed and shaped as declared, as the worker
    decodes it; ValueError when there is not exactly one, or it does not decode."""
    oip = _oip()
    try:
        tensors = oip.decode_inputs(request, b"")
    except oip.ProtocolError as exc:
        raise ValueError(str(exc)) from None
    if len(tensors) != 1:
        raise ValueError(f"{len(tensors)} inputs")
    [tensor] = tensors.values()
    if tensor.dtype.kind not in "iuf":
        raise ValueError("not numbers")
    return tensor


# The most pixels of a recorded image drift decodes (it does so at every measurement): a handler works
# out the signals of a larger one itself, where it was decoded anyway (the fashion handler).
DERIVED_MAX_PIXELS = 128 * 128

# The archive file each kind's `from_input` reads besides the record (the sentiment vocabulary).
INPUT_FILES = {"sentiment": "vocab.json"}


def input_data(kind: str, content: bytes | None) -> Any:
    """What `from_input` needs of the archive for `kind`, from the content of its INPUT_FILES member
    (the sentiment vocabulary's tokens, as a set); None when the kind needs none or it is missing."""
    if kind == "sentiment" and content is not None:
        vocab = json.loads(content)
        tokens = vocab.get("tokens") if isinstance(vocab, dict) else None
        return frozenset(tokens) if isinstance(tokens, (dict, list)) else None
    return None


def from_input(kind: str, model_input: Any, data: Any = None) -> Signals | None:
    """The signals of a captured request whose handler records them as "input" (`signals_from_input`):
    derived here, where drift reads the capture, from the input recorded (the same values the handler
    would have recorded); `data` is `input_data`'s. None when the input cannot be read (a record is
    anyone's to write: nothing in one raises here)."""
    try:
        return _from_input(kind, model_input, data)
    except Exception:  # noqa: BLE001 - an unreadable record is left out, not the measurement
        return None


def _from_input(kind: str, model_input: Any, data: Any) -> Signals | None:
    if kind == "mlp":
        rows = mlp_rows(model_input)
        return mlp(rows) if rows is not None else None
    if kind == "sentiment" and data is not None:
        texts = _texts(model_input)
        return None if texts is None else sentiment(text(words(t), data) for t in texts)
    if kind == "fashion":
        images = _images(model_input)
        return None if images is None else fashion(images)
    return None


def _texts(model_input: Any) -> list[str] | None:
    """The texts of a captured sentiment request ({"text": ...} or {"texts": [...]}), the picked ones."""
    if not isinstance(model_input, dict):
        return None
    texts = model_input["texts"] if "texts" in model_input else [model_input.get("text")]  # as the handler reads it
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return None
    return [texts[i] for i in picked(len(texts))]


def _images(model_input: Any) -> np.ndarray | None:
    """The images of a captured fashion request as its handler reads them (n x 28 x 28, 0-1): image bytes
    ({"base64": ...}) of at most DERIVED_MAX_PIXELS, an .npy body, {"image": ...} or an Open Inference
    Protocol request's one input (typed as declared)."""
    # imported by name: a worker imports each archive file as a top-level module (the fashion archive
    # packs this one), the drift command as torchship's; and an archive packing the handler base for
    # other kinds of data does not pack it (or need Pillow) because this module names it
    try:
        torchship_image: Any = importlib.import_module("torchship_image")
    except ModuleNotFoundError:
        torchship_image = importlib.import_module("torchship.handlers.torchship_image")

    if not isinstance(model_input, dict):
        return None
    try:
        if _oip().is_v2(model_input):  # the handler reads a v2 request's inputs alone
            image = _v2_tensor(model_input)
        elif set(model_input) == {"base64"}:
            raw = base64.b64decode(model_input["base64"], validate=True)
            return torchship_image.decode(raw, DERIVED_MAX_PIXELS)
        elif set(model_input) == {"npy", "data"}:
            image = np.asarray(model_input["data"], dtype=np.float64).reshape([int(d) for d in model_input["npy"]])
        elif "image" in model_input:
            image = np.asarray(model_input["image"], dtype=np.float64)
        else:
            return None
        return torchship_image.normalise(image, "image")
    except (torchship_image.ImageError, TypeError, ValueError, OverflowError):
        return None


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters and digits of any script, inner apostrophes


def words(text: str) -> list[str]:
    """A text's lower-cased words, in any script. Not the model's tokenizer (torchship_text), which
    reads only a-z and 0-9: a text in another script would have no words, hence no unknown ones, and
    look more familiar than the training data instead of less."""
    return _WORD.findall(text.lower())


def text(words: Sequence[str], vocab: Any) -> tuple[int, float]:
    """(words in a text, share of them the vocabulary does not know); `words` as `words` gives them."""
    if not words:
        return 0, 0.0
    unknown = sum(1 for w in words if w not in vocab)
    return len(words), unknown / len(words)


def sentiment(texts: Iterable[tuple[int, float]], cap: bool = True) -> Signals:
    """Each text's (words, out-of-vocabulary share), as `text` gives them."""
    texts = list(texts)
    texts = [texts[i] for i in picked(len(texts), cap)]
    return {"tokens": [int(n) for n, _ in texts], "oov": [_r(o) for _, o in texts]}


def one_text_json(words: int, oov: float) -> bytes:
    """`sentiment` of a request of one text (the common case) as record JSON, the bytes
    `torchship_capture.signals_json` gives for it, without building and encoding the dict."""
    return b'{"tokens":[%d],"oov":[%s]}' % (int(words), repr(_r(oov)).encode("ascii"))


def fashion(images: np.ndarray, cap: bool = True) -> Signals:
    """Images (n x 28 x 28, intensities 0-1): each one's mean, spread and share of dark pixels."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    chosen = images[picked(len(images), cap)]
    images = chosen.reshape(len(chosen), -1)
    return {
        "mean": _rs(images.mean(axis=1)),
        "std": _rs(images.std(axis=1)),
        "dark": _rs((images < DARK).mean(axis=1)),
    }


def recommender(activity: int | None, item_popularity: float | None) -> Signals:
    """One request's user: None for an unknown one, else how many items they rated in training and the mean
    log(1 + popularity) of those items."""
    if activity is None:
        return {"unknown_user": [1]}
    out: Signals = {"unknown_user": [0], "user_activity": [int(activity)]}
    if item_popularity is not None:
        out["item_popularity"] = [_r(item_popularity)]
    return out


def mean_log_popularity(items: Sequence[int], popularity: Sequence[float]) -> float | None:
    """The mean log(1 + popularity) of `items` (None for none)."""
    if len(items) == 0:
        return None
    return float(np.mean([math.log1p(popularity[int(i)]) for i in items]))


# ------------------------------------------------------------------ from the answer


def predictions(kind: str, answer: Any) -> Signals:
    """The prediction signals of one answer (a JSON answer, or a list of them for a request of many items)."""
    answers = answer if isinstance(answer, list) else [answer]
    answers = [a for a in answers if isinstance(a, dict)]
    answers = [answers[i] for i in picked(len(answers))]
    out: Signals = {}
    if kind == "recommender":
        scores = [
            a["items"][0].get("score")
            for a in answers
            if a.get("fallback") is None and isinstance(a.get("items"), list) and a["items"]
        ]
        scores = [s for s in scores if isinstance(s, (int, float))]
        if scores:
            out["top_score"] = [_r(s) for s in scores]
        return out
    classes, scores = [], []
    for a in answers:
        probs = a.get("probabilities")
        if isinstance(probs, dict) and a.get("label") in probs:  # {"label", "probabilities": {label: p}}
            classes.append(str(a["label"]))
            scores.append(_r(probs[a["label"]]))
        elif isinstance(probs, list) and isinstance(a.get("class_id"), int) and 0 <= a["class_id"] < len(probs):
            classes.append(str(a["class_id"]))
            scores.append(_r(probs[a["class_id"]]))
    if classes:
        out["pred_class"], out["pred_score"] = classes, scores
    return out


def classifier_predictions(probabilities: np.ndarray, labels: Sequence[str] | None = None) -> Signals:
    """The prediction signals of held-out probabilities (n x classes), as `predictions` reads them from answers."""
    p = np.asarray(probabilities, dtype=np.float64)
    top = p.argmax(axis=1)
    classes = [labels[c] if labels is not None else str(c) for c in top.tolist()]
    return {"pred_class": classes, "pred_score": [_r(v) for v in p[np.arange(len(p)), top]]}


# ------------------------------------------------------------------ references and their bins


def category(value: Any) -> str:
    """A categorical value as the reference names it (1 and 1.0 are the same category)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def describe(values: Sequence[Any], categorical: bool, bins: int = BINS) -> dict[str, Any]:
    """A signal's reference: proportions per category, or a histogram over the held-out deciles.

    Continuous: ``edges`` e1 < ... < ek (the held-out quantiles, ties merged) cut the line into
    (-inf, e1], (e1, e2], ..., (ek, inf); ``proportions`` of the held-out values in each."""
    n = len(values)
    if categorical:
        names = [category(v) for v in values]
        cats = sorted(set(names))
        counts = [names.count(c) for c in cats]
        return {
            "type": "categorical",
            "n": n,
            "categories": cats,
            "proportions": [round(c / n, 4) for c in counts],
        }
    x = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])) if n else np.array([0.0])
    edges = np.unique([_r(e) for e in edges])
    counts = histogram(x, edges)
    return {
        "type": "continuous",
        "n": n,
        "edges": [float(e) for e in edges],
        "proportions": [round(float(c) / max(n, 1), 4) for c in counts],
    }


def histogram(values: Any, edges: Sequence[float]) -> np.ndarray:
    """Counts of `values` in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    x = np.asarray(values, dtype=np.float64)
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left"), minlength=len(edges) + 1)


def reference(kind: str, signals: Signals, held_out: int, categorical: Iterable[str] = ()) -> dict[str, Any]:
    """The reference a checkpoint records: each signal described over the held-out data (`categorical`
    names signals of categories besides pred_class and unknown_user; the others are numbers)."""
    kinds = CATEGORICAL | set(categorical)
    return {
        "format": "torchship-reference/1",
        "kind": kind,
        "held_out": held_out,
        "max_items": MAX_ITEMS,
        "signals": {name: describe(values, name in kinds) for name, values in signals.items()},
    }
