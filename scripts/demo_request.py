"""Print one real request body for an example model (used by `make demo` and `make predict`)."""

from __future__ import annotations

import json
import sys


def mlp_request() -> dict:
    # a held-out input of the mlp's own data (the seed-0 data set, past its training split)
    from train.mlp import make_data

    x, y = make_data(seed=0, samples=10000)
    return {"data": [round(v, 6) for v in x[-1].tolist()]}


REQUESTS = {"mlp": mlp_request}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "mlp"
    if name not in REQUESTS:
        sys.exit(f"error: no demo request for {name!r}; known: {', '.join(REQUESTS)}")
    print(json.dumps(REQUESTS[name]()))
