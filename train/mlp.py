"""Train `mlp`, the mission's model (Linear 100->50->10, Adam, cross-entropy), on seeded random data.

As in the mission, the inputs are random tensors. So that accuracy means something, each label
is the class a fixed random linear "teacher" scores highest for that input: the data is random
but learnable, and a held-out split measures how well the model learnt it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from torchship.handlers import torchship_signals
from torchship.handlers.torchship_models import MLP

from .common import (
    HeldOut,
    Progress,
    RunResult,
    drift_reference,
    fingerprint_tensors,
    new_run_dir,
    seed_everything,
    shuffled_batches,
    train_epoch,
    write_checkpoint,
)

ARCHITECTURE = {"in_features": 100, "hidden": 50, "classes": 10}


def make_teacher(seed: int) -> torch.Tensor:
    """The fixed random linear map whose highest-scoring class is each input's label."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(ARCHITECTURE["in_features"], ARCHITECTURE["classes"], generator=gen)


def make_data(seed: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` random inputs and their teacher labels; the same seed gives the same data."""
    teacher = make_teacher(seed)  # its own generator: the task does not depend on the sample count
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(samples, ARCHITECTURE["in_features"], generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return x, y


def train(
    checkpoints: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    quick: bool = False,
    samples: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    progress: bool = True,
    shuffle_labels: bool = False,
    data_seed: int = 0,
) -> RunResult:
    """Train and write a checkpoint. `seed` sets the initial weights and batch order; `data_seed`
    the data set (the same task for every run unless changed). `shuffle_labels` trains on permuted
    labels: a deliberately bad model, for testing that rollouts reject it."""
    started = time.monotonic()
    epochs = epochs or (10 if quick else 30)
    samples = samples or 10000
    torch.set_num_threads(1)
    gen = seed_everything(seed)
    x, y = make_data(data_seed, samples)
    split = int(0.8 * samples)
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
    if shuffle_labels:
        y_train = y_train[torch.randperm(split, generator=gen)]

    model = MLP(**ARCHITECTURE)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    bar = Progress("mlp", epochs) if progress else None
    history = []
    for epoch in range(1, epochs + 1):
        train_loss = train_epoch(
            model,
            optimiser,
            shuffled_batches(split, batch_size, gen),
            lambda idx: loss_fn(model(x_train[idx]), y_train[idx]),
        )
        model.eval()
        with torch.inference_mode():
            logits = model(x_val)
            val_loss = loss_fn(logits, y_val).item()
            val_acc = (logits.argmax(dim=1) == y_val).float().mean().item()
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc})
        if bar:
            bar.update(epoch, loss=train_loss, val_acc=val_acc)
    # what drift is measured against: the held-out rows, and the trained model's answers to them
    signals = torchship_signals.mlp(x_val.numpy(), cap=False)
    signals.update(torchship_signals.classifier_predictions(torch.softmax(logits, dim=1).numpy()))

    metrics = {"val_accuracy": round(history[-1]["val_accuracy"], 4), "val_loss": round(history[-1]["val_loss"], 4)}
    run_dir = new_run_dir(checkpoints, "mlp")
    seconds = time.monotonic() - started
    write_checkpoint(
        run_dir,
        model=model,
        kind="mlp",
        architecture=ARCHITECTURE,
        hyper_parameters={
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": "Adam",
            "loss": "cross_entropy",
            "quick": quick,
            "shuffle_labels": shuffle_labels,
        },
        data={
            "source": f"seeded random tensors (data seed {data_seed}), labels from a seeded random linear teacher",
            "samples": samples,
            "train": split,
            "validation": samples - split,
            "fingerprint": fingerprint_tensors(x, y),
        },
        metrics=metrics,
        history=history,
        seed=seed,
        seconds=seconds,
        extra={"data_seed": data_seed, "reference": drift_reference("mlp", signals, len(y_val))},
    )
    return RunResult(run_dir, metrics, seconds)


def held_out(run_dir: Path) -> HeldOut:
    """The run's validation split (the last 20% of its data set), which training never saw: accuracy."""
    import json

    meta = json.loads((Path(run_dir) / "meta.json").read_text(encoding="utf-8"))
    x, y = make_data(int(meta.get("data_seed", 0)), int(meta["data"]["samples"]))
    x_val, y_val = x[meta["data"]["train"] :], y[meta["data"]["train"] :]

    def metric(model: nn.Module) -> float:
        with torch.inference_mode():
            return (model(x_val).argmax(dim=1) == y_val).float().mean().item()

    return HeldOut("val_accuracy", len(y_val), metric, lambda n: (x_val[:n],))
