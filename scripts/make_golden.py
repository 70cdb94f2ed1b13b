"""Write tests/golden/<model>.jsonl: held-out inputs with their expected answers.

    .venv/bin/python scripts/make_golden.py mlp|sentiment|fashion|recommender|all [--rows 100]

Golden sets are used by the tests and by guarded rollouts (`torchship rollout --golden`). The
same command always writes the same file. mlp's is committed; the others are built from data/
by the set-up (`make data`), since their data may not be redistributed.

`expected` holds fields the answer must have; {"contains": x} means a list that contains x.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mlp_rows(rows: int) -> list[dict]:
    # the seed-0 data set's validation split (the last 20%), which training never sees
    from torchship.train.mlp import make_data

    x, y = make_data(seed=0, samples=10000)
    return [
        {"input": {"data": [round(v, 5) for v in x[i].tolist()]}, "expected": {"class_id": int(y[i])}}
        for i in range(10000 - rows, 10000)
    ]


def sentiment_rows(rows: int) -> list[dict]:
    from torchship.train.data import load_rotten_tomatoes
    from torchship.train.sentiment import LABELS, split

    texts, labels = load_rotten_tomatoes()
    _, held_out = split(len(texts))
    return [{"input": {"text": texts[i]}, "expected": {"label": LABELS[int(labels[i])]}} for i in held_out[:rows]]


def fashion_rows(rows: int) -> list[dict]:
    from torchship.train.data import FASHION_LABELS, load_fashion

    _, _, x_test, y_test = load_fashion()
    return [
        {"input": {"image": x_test[i].tolist()}, "expected": {"label": FASHION_LABELS[int(y_test[i])]}}
        for i in range(rows)
    ]


def recommender_rows(rows: int) -> list[dict]:
    # each user's held-out (last) interaction must be among the top 10 of all unseen items
    from torchship.train.data import load_movielens
    from torchship.train.recommender import leave_one_out

    ml = load_movielens()
    split = leave_one_out(ml)
    return [
        {
            "input": {"user_id": split.users[split.u[k]], "k": 10},
            "expected": {"item_ids": {"contains": split.items[split.i[k]]}},
        }
        for k in split.held_out[:rows]
    ]


BUILDERS = {"mlp": mlp_rows, "sentiment": sentiment_rows, "fashion": fashion_rows, "recommender": recommender_rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(BUILDERS) + ["all"])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    for model in sorted(BUILDERS) if args.model == "all" else [args.model]:
        out = args.out or ROOT / "tests" / "golden" / f"{model}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = BUILDERS[model](args.rows)
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        if not out.exists() or out.read_text() != text:
            out.write_text(text)
            print(f"wrote {len(rows)} golden rows to {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
