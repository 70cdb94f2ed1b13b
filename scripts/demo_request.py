"""One real request for an example model (used by `make demo` and `make predict`).

    .venv/bin/python scripts/demo_request.py MODEL          # prints a JSON body
    .venv/bin/python scripts/demo_request.py fashion --png F  # writes a real test image as PNG

mlp: a held-out input of its data; sentiment: a held-out review; fashion: a test image;
recommender: a real user of MovieLens-100k; embedder: a query and candidates; textgen: a prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def mlp_request() -> dict:
    from torchship.train.mlp import make_data

    x, _ = make_data(seed=0, samples=10000)
    return {"data": [round(v, 6) for v in x[-1].tolist()]}


def sentiment_request() -> dict:
    from torchship.train.data import load_rotten_tomatoes
    from torchship.train.sentiment import split

    texts, _ = load_rotten_tomatoes()
    _, held_out = split(len(texts))
    return {"text": texts[held_out[0]]}


def fashion_png(path: Path) -> None:
    from PIL import Image

    from torchship.train.data import load_fashion

    _, _, x_test, _ = load_fashion()
    Image.fromarray(x_test[0]).save(path)


def recommender_request() -> dict:
    return {"user_id": "196", "k": 5, "exclude_seen": True}


def embedder_request() -> dict:
    return {
        "query": "A man is eating food.",
        "candidates": ["A man is riding a horse.", "A man is eating a piece of bread.", "A woman plays the violin."],
    }


def textgen_request() -> dict:
    return {"prompt": "This film is", "max_new_tokens": 160, "temperature": 0.8, "seed": 1}


REQUESTS = {
    "mlp": mlp_request,
    "sentiment": sentiment_request,
    "recommender": recommender_request,
    "embedder": embedder_request,
    "textgen": textgen_request,
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--png", type=Path, help="fashion: write a test image here instead")
    args = parser.parse_args()
    if args.model == "fashion":
        if not args.png:
            sys.exit("error: fashion takes an image: give --png PATH")
        fashion_png(args.png)
    elif args.model in REQUESTS:
        print(json.dumps(REQUESTS[args.model]()))
    else:
        sys.exit(
            f"error: no demo request for {args.model!r}; known: mlp, sentiment, fashion, recommender, embedder, textgen"
        )
