"""Train `fashion`: a small CNN on Fashion-MNIST (60k train, 10k test images, 28x28 grey)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchship.handlers import torchship_signals
from torchship.handlers.torchship_models import FashionCNN

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
from .data import DATA, FASHION_LABELS, load_fashion


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def train(
    checkpoints: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    quick: bool = False,
    data_dir: Path | None = None,
    lr: float = 2e-3,
    batch_size: int = 128,
    progress: bool = True,
) -> RunResult:
    started = time.monotonic()
    epochs = epochs or (2 if quick else 5)
    torch.set_num_threads(2)
    gen = seed_everything(seed)
    folder = data_dir or DATA / "fashion"
    x_train, y_train, x_test, y_test = load_fashion(folder)
    x, y = to_tensor(x_train), torch.from_numpy(y_train.astype(np.int64))
    xt, yt = to_tensor(x_test), torch.from_numpy(y_test.astype(np.int64))

    model = FashionCNN(len(FASHION_LABELS))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    bar = Progress("fashion", epochs) if progress else None
    history = []
    for epoch in range(1, epochs + 1):
        train_loss = train_epoch(
            model,
            optimiser,
            shuffled_batches(len(x), batch_size, gen),
            lambda idx: nn.functional.cross_entropy(model(x[idx]), y[idx]),
        )
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(xt[s : s + 2000]) for s in range(0, len(xt), 2000)])
            val_loss = nn.functional.cross_entropy(logits, yt).item()
            acc = (logits.argmax(1) == yt).float().mean().item()
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": acc})
        if bar:
            bar.update(epoch, loss=train_loss, val_acc=acc)

    # what drift is measured against: the test images, and the trained model's answers to them
    signals = torchship_signals.fashion(xt[:, 0].numpy(), cap=False)
    signals.update(torchship_signals.classifier_predictions(torch.softmax(logits, dim=1).numpy()))
    metrics = {"val_accuracy": round(history[-1]["val_accuracy"], 4)}
    run_dir = new_run_dir(checkpoints, "fashion")
    seconds = time.monotonic() - started
    write_checkpoint(
        run_dir,
        model=model,
        kind="fashion",
        architecture={"classes": len(FASHION_LABELS)},
        hyper_parameters={"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": "Adam", "quick": quick},
        data={
            "source": "Fashion-MNIST (Debian dataset-fashion-mnist)",
            "train": len(x),
            "test": len(xt),
            "fingerprint": fingerprint_files(sorted(folder.glob("*-ubyte.gz"))),
        },
        metrics=metrics,
        history=history,
        seed=seed,
        seconds=seconds,
        extra={"labels": FASHION_LABELS, "reference": drift_reference("fashion", signals, len(yt))},
    )
    return RunResult(run_dir, metrics, seconds)


def held_out(run_dir: Path | None = None, data_dir: Path | None = None) -> HeldOut:
    """Fashion-MNIST's 10k test images, which training never sees: accuracy."""
    _, _, x_test, y_test = load_fashion(data_dir or DATA / "fashion")
    xt, yt = to_tensor(x_test), torch.from_numpy(y_test.astype(np.int64))

    def metric(model: nn.Module) -> float:
        with torch.inference_mode():
            logits = torch.cat([model(xt[s : s + 2000]) for s in range(0, len(xt), 2000)])
        return (logits.argmax(1) == yt).float().mean().item()

    return HeldOut("val_accuracy", len(yt), metric, lambda n: (xt[:n],))
