"""Train `recommender`: matrix factorisation with a BPR loss on MovieLens-100k.

Each user's last interaction (by time) is held out. Quality is hit-rate@10: how often the
held-out item ranks in the top 10 among itself and 99 items the user never interacted with
(sampled with a fixed seed); a popularity ranking is scored on the same candidates in the same
run. The archive carries catalog.json: ids, titles, each user's seen items, the popular items.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchship.handlers import torchship_signals
from torchship.handlers.torchship_models import MatrixFactorization

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
from .data import DATA, MovieLens, load_movielens

NEGATIVES = 99


@dataclass
class Split:
    users: list[str]  # raw ids by index
    items: list[str]
    u: np.ndarray  # per interaction, user index
    i: np.ndarray
    train: np.ndarray  # boolean mask over interactions
    held_out: np.ndarray  # interaction index of each user's last interaction


def leave_one_out(ml: MovieLens) -> Split:
    users = sorted(set(ml.users.tolist()), key=lambda s: (len(s), s))
    items = sorted(set(ml.items.tolist()), key=lambda s: (len(s), s))
    uid, iid = {u: n for n, u in enumerate(users)}, {x: n for n, x in enumerate(items)}
    u = np.array([uid[x] for x in ml.users])
    i = np.array([iid[x] for x in ml.items])
    last = {}
    for k in np.lexsort((np.arange(len(u)), ml.timestamps, u)):
        last[u[k]] = k
    held_out = np.array(sorted(last.values()))
    train = np.ones(len(u), dtype=bool)
    train[held_out] = False
    return Split(users, items, u, i, train, held_out)


def candidates(split: Split, seen: list[set[int]], seed: int = 0) -> np.ndarray:
    """Per held-out interaction: [held-out item, 99 unseen items]."""
    rng = np.random.default_rng(seed)
    out = []
    for k in split.held_out:
        user, positive = split.u[k], split.i[k]
        negatives: set[int] = set()
        while len(negatives) < NEGATIVES:
            j = int(rng.integers(len(split.items)))
            if j not in seen[user] and j != positive:
                negatives.add(j)
        out.append([positive, *sorted(negatives)])
    return np.asarray(out)


def hit_rate(scores: np.ndarray, k: int = 10) -> float:
    """scores: (users, 100) with the held-out item first; ties count against it."""
    rank = (scores > scores[:, :1]).sum(1) + (scores[:, 1:] == scores[:, :1]).sum(1)
    return float((rank < k).mean())


def train(
    checkpoints: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    quick: bool = False,
    data_dir: Path | None = None,
    dim: int = 32,
    lr: float = 1e-2,
    batch_size: int = 1024,
    progress: bool = True,
) -> RunResult:
    started = time.monotonic()
    epochs = epochs or (12 if quick else 20)
    torch.set_num_threads(2)
    gen = seed_everything(seed)
    folder = data_dir or DATA / "recommender"
    ml = load_movielens(folder)
    split = leave_one_out(ml)
    n_users, n_items = len(split.users), len(split.items)
    tu, ti = torch.from_numpy(split.u[split.train]), torch.from_numpy(split.i[split.train])
    seen = [set() for _ in range(n_users)]
    for a, b in zip(tu.tolist(), ti.tolist()):
        seen[a].add(b)
    cand = candidates(split, seen)
    cand_t, cand_users = torch.from_numpy(cand), torch.from_numpy(split.u[split.held_out])
    popularity = np.bincount(ti.numpy(), minlength=n_items).astype(np.float64)
    popular_hr = hit_rate(popularity[cand])

    model = MatrixFactorization(n_users, n_items, dim)
    for emb in (model.user, model.item):
        torch.nn.init.normal_(emb.weight, std=0.1, generator=gen)
    torch.nn.init.zeros_(model.item_bias.weight)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    bar = Progress("recommender", epochs) if progress else None
    history = []

    def bpr_loss(b: torch.Tensor) -> torch.Tensor:
        users, positives = tu[b], ti[b]
        negatives = torch.randint(0, n_items, (len(b),), generator=gen)
        return -torch.nn.functional.logsigmoid(model.score(users, positives) - model.score(users, negatives)).mean()

    for epoch in range(1, epochs + 1):
        train_loss = train_epoch(model, optimiser, shuffled_batches(len(tu), batch_size, gen), bpr_loss)
        with torch.inference_mode():
            hr = hit_rate(model.score(cand_users[:, None], cand_t).numpy())
        history.append({"epoch": epoch, "bpr_loss": train_loss, "hit_rate_at_10": hr})
        if bar:
            bar.update(epoch, loss=train_loss, hr10=hr)

    signals = reference_signals(model, split.u[split.held_out], seen, popularity)
    run_dir = new_run_dir(checkpoints, "recommender")
    catalog = {
        "users": split.users,
        "items": split.items,
        "titles": {x: ml.titles.get(x, x) for x in split.items},
        "seen": [sorted(s) for s in seen],
        "popular": np.argsort(-popularity, kind="stable")[:200].tolist(),
        "popularity": popularity.astype(int).tolist(),
    }
    (run_dir / "catalog.json").write_text(json.dumps(catalog, separators=(",", ":")))
    metrics = {
        "hit_rate_at_10": round(history[-1]["hit_rate_at_10"], 4),
        "popularity_hit_rate_at_10": round(popular_hr, 4),
    }
    seconds = time.monotonic() - started
    write_checkpoint(
        run_dir,
        model=model,
        kind="recommender",
        architecture={"users": n_users, "items": n_items, "dim": dim},
        hyper_parameters={
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "loss": "bpr",
            "quick": quick,
            "negatives_for_eval": NEGATIVES,
        },
        data={
            "source": "MovieLens-100k (recbole 1.2.1 dataset_example), leave-last-out per user",
            "interactions": len(split.u),
            "users": n_users,
            "items": n_items,
            "fingerprint": fingerprint_files(sorted(folder.glob("ml-100k.*"))),
        },
        metrics=metrics,
        history=history,
        seed=seed,
        seconds=seconds,
        extra={"reference": drift_reference("recommender", signals, len(split.held_out))},
    )
    return RunResult(run_dir, metrics, seconds)


def reference_signals(
    model: MatrixFactorization, users: np.ndarray, seen: list[set[int]], popularity: np.ndarray
) -> dict[str, list]:
    """What drift is measured against: a request for each held-out user (each user once; all of them known),
    and the top score the trained model gives them, seen items left out as the handler leaves them out."""
    signals: dict[str, list] = {"unknown_user": [], "user_activity": [], "item_popularity": []}
    for u in users.tolist():
        for name, values in torchship_signals.recommender(
            len(seen[u]), torchship_signals.mean_log_popularity(sorted(seen[u]), popularity)
        ).items():
            signals[name] += values
    model.eval()
    with torch.inference_mode():
        scores = model(torch.from_numpy(users)).clone()
        for row, u in enumerate(users.tolist()):
            if seen[u]:
                scores[row, sorted(seen[u])] = float("-inf")
    signals["top_score"] = [round(float(v), 6) for v in scores.max(dim=1).values]
    return signals


def held_out(run_dir: Path | None = None, data_dir: Path | None = None) -> HeldOut:
    """Each user's last interaction against 99 unseen items (the same candidates training scores):
    hit-rate@10, with every score from the model's forward (a user's score for every item, as served)."""
    split = leave_one_out(load_movielens(data_dir or DATA / "recommender"))
    seen: list[set[int]] = [set() for _ in split.users]
    for a, b in zip(split.u[split.train].tolist(), split.i[split.train].tolist()):
        seen[a].add(b)
    cand = torch.from_numpy(candidates(split, seen))
    users = torch.from_numpy(split.u[split.held_out])

    def metric(model: torch.nn.Module) -> float:
        with torch.inference_mode():
            return hit_rate(model(users).gather(1, cand).numpy())

    return HeldOut("hit_rate_at_10", len(users), metric, lambda n: (users[:n],))
