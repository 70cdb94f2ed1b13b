"""Drift on a real TorchServe for the three application examples: each version's workers capture what it is
sent, with its signals; held-out traffic (real held-out reviews, Fashion-MNIST test images, real users) is calm
against the training reference packed in the archive, and shifted traffic of the same size drifts in the signal
that describes the shift: other-domain text (the Python standard library's docstrings) in `oov`, inverted
images in `mean` and `dark`, users the catalog does not know in `unknown_user`."""

from __future__ import annotations

import importlib
import inspect
import io
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchship.handlers import torchship_capture
from torchship.ops import capture as ops
from torchship.ops import drift as drift_ops

from .conftest import deploy_example

pytestmark = pytest.mark.integration

N = 240
VERSION = "1.0"
# other-domain text for sentiment: the first paragraph of the docstrings of these modules' functions and classes
DOC_MODULES = (
    "argparse",
    "base64",
    "bisect",
    "collections",
    "csv",
    "datetime",
    "difflib",
    "email.utils",
    "fnmatch",
    "functools",
    "glob",
    "hashlib",
    "heapq",
    "inspect",
    "itertools",
    "json",
    "logging",
    "os",
    "os.path",
    "pathlib",
    "re",
    "shutil",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "urllib.parse",
    "zipfile",
)


@pytest.fixture(scope="module")
def deployed(client, store, public_key, example_archives, sentiment_run, fashion_run, recommender_run):
    runs = {"sentiment": sentiment_run, "fashion": fashion_run, "recommender": recommender_run}
    mine = [name for name in runs if deploy_example(client, store, name, public_key).action == "registered"]
    yield runs
    for name in mine:
        client.unregister(name, VERSION)


# ------------------------------------------------------------------ traffic, as each handler takes it


def held_out_reviews(run: Path) -> list[Any]:
    from torchship.train.sentiment import corpus

    _, texts, _, _, test_idx = corpus()
    return [{"text": texts[i]} for i in test_idx[:N]]


def docstrings(run: Path) -> list[Any]:
    """Real English text from another domain: what the standard library's functions and classes do."""
    found = set()
    for module_name in DOC_MODULES:
        module = importlib.import_module(module_name)
        for attr in dir(module):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            text = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
            if len(text.split()) >= 6 and len(text) <= 1000:
                found.add(text)
    assert len(found) >= N, f"only {len(found)} docstrings"
    return [{"text": t} for t in random.Random(0).sample(sorted(found), N)]


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fashion_test_images() -> np.ndarray:
    from torchship.train.data import load_fashion

    return load_fashion()[2][:N]


def held_out_images(run: Path) -> list[Any]:
    return [png(x) for x in fashion_test_images()]


def inverted_images(run: Path) -> list[Any]:
    """Dark clothes on white, as a photo of them would be: Fashion-MNIST's test images, 255 - pixels."""
    return [png(255 - x) for x in fashion_test_images()]


def real_users(run: Path) -> list[Any]:
    users = json.loads((run / "catalog.json").read_text())["users"]
    return [{"user_id": u} for u in random.Random(0).sample(users, N)]


def unknown_users(run: Path) -> list[Any]:
    users = set(json.loads((run / "catalog.json").read_text())["users"])
    bodies = [{"user_id": str(100_000 + i)} for i in range(N)]  # new sign-ups: ids past the catalog's
    assert not users & {b["user_id"] for b in bodies}
    return bodies


# name: (held-out traffic, shifted traffic, the signals the shift must drift in, those it leaves too few of)
CASES: dict[str, tuple[Callable[[Path], list[Any]], Callable[[Path], list[Any]], set[str], set[str]]] = {
    "sentiment": (held_out_reviews, docstrings, {"oov"}, set()),
    "fashion": (held_out_images, inverted_images, {"mean", "dark"}, set()),
    "recommender": (real_users, unknown_users, {"unknown_user"}, {"user_activity", "item_popularity", "top_score"}),
}


# ------------------------------------------------------------------ one phase of traffic and its report


def figures(report: drift_ops.DriftReport) -> str:
    return "; ".join(
        f"{s.signal} {s.test} {s.statistic} (>{s.threshold}) {s.verdict} n={s.live}" for s in report.signals
    )


def send(client, root: Path, store: Path, name: str, bodies: list[Any]) -> tuple[drift_ops.DriftReport, list[Any]]:
    """Send `bodies` to `name` with an empty capture folder; return the drift report of what was captured."""
    for f in torchship_capture.folder(root, name, VERSION).glob("capture-*.jsonl"):
        f.unlink()  # a worker that still has it open begins a new file (torchship_capture._write)
    answers = client.predict_many(name, bodies, concurrency=4)
    failed = [a for a in answers if isinstance(a, Exception)]
    assert not failed, failed[:3]
    # the default window (500) is over N: `records` is everything captured in this phase
    report = drift_ops.drift(root, store / f"{name}-{VERSION}.mar", name, VERSION)
    print(f"{name}: drift={report.drift} records={report.records}: {figures(report)}")
    return report, answers


@pytest.mark.parametrize("name", sorted(CASES))
def test_held_out_traffic_is_calm_shifted_traffic_drifts(server, client, store, deployed, name):
    calm_then_shifted(server, client, store, deployed[name], name, *CASES[name])


def calm_then_shifted(
    server,
    client,
    store: Path,
    run: Path,
    name: str,
    held_out: Callable[[Path], list[Any]],
    shifted: Callable[[Path], list[Any]],
    drifts_in: set[str],
    too_few: set[str],
) -> None:
    calm_bodies, shifted_bodies = held_out(run), shifted(run)
    assert len(calm_bodies) == len(shifted_bodies) == N
    root = server.capture_dir
    ops.write_settings(root, name, VERSION, sample=1.0)
    time.sleep(1.2)  # a worker looks at its settings at most once a second
    try:
        calm, answers = send(client, root, store, name, calm_bodies)
        assert calm.records == N, figures(calm)
        assert not calm.drift and calm.drifted == [], figures(calm)
        # every signal judged on one value per request: calm because the traffic is like the held-out data
        assert {s.signal: s.live for s in calm.signals} == {s.signal: N for s in calm.signals}, figures(calm)
        if name == "recommender":
            assert all(a["fallback"] is None for a in answers)

        moved, answers = send(client, root, store, name, shifted_bodies)
        assert moved.records == N, figures(moved)
        assert moved.drift and drifts_in <= set(moved.drifted), figures(moved)
        verdicts = {s.signal: s.verdict for s in moved.signals}
        assert {s for s, v in verdicts.items() if v == "too few"} == too_few, figures(moved)
        if name == "recommender":
            assert all(a["fallback"] == "popular" for a in answers)
    finally:
        ops.turn_off(root, name, VERSION)
