"""Write tests/golden/<model>.jsonl: held-out inputs with their expected answers.

    .venv/bin/python scripts/make_golden.py mlp [--rows 100]

Golden sets are used by the tests and by guarded rollouts (`torchship rollout --golden`).
The same command always writes the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mlp_rows(rows: int) -> list[dict]:
    # the seed-0 data set's validation split (the last 20%), which training never sees
    from train.mlp import make_data

    x, y = make_data(seed=0, samples=10000)
    return [{"input": {"data": [round(v, 5) for v in x[i].tolist()]}, "expected": {"class_id": int(y[i])}}
            for i in range(10000 - rows, 10000)]


BUILDERS = {"mlp": mlp_rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "tests" / "golden" / f"{args.model}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = BUILDERS[args.model](args.rows)
    out.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    print(f"wrote {len(rows)} golden rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
