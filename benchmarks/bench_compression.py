"""Does compressing request or response bodies pay? Side by side for every example model.

    .venv/bin/python benchmarks/bench_compression.py

TorchServe 0.12's frontend neither decodes `Content-Encoding: gzip` request bodies nor
compresses responses (its netty pipeline has no content codec), so torchship's handlers unpack
gzip bodies themselves, and the client gzips only when asked (`compress_min_bytes`). It pays
only on links slower than the break-even bandwidth printed here: bytes saved / (compress +
decompress time). Requests are the real ones `make demo` sends; answers have the handlers' shape
(deflate level 1, the cheapest).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def request_bodies() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    from torchship.train.data import load_fashion

    out = {}
    for model in ("mlp", "sentiment", "recommender", "embedder", "textgen"):
        out[f"{model} JSON"] = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo_request.py"), model], capture_output=True, check=True
        ).stdout.strip()
    images = load_fashion()[2]
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    out["fashion PNG"] = png.getvalue()
    from torchship.train.mlp import make_data

    for name, array in (
        ("fashion .npy x16", images[:16]),
        ("mlp .npy x16", make_data(0, 10000)[0][-16:].numpy().astype(np.float32)),
    ):
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        out[name] = buf.getvalue()
    return out


def response_bodies() -> dict[str, bytes]:
    """Answers shaped like the handlers' (same keys, same number of digits)."""
    import numpy as np

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10)).round(6).tolist()
    return {
        "mlp answer": json.dumps({"class_id": 3, "probabilities": probs}).encode(),
        "embedder answer (2 texts)": json.dumps(
            {"embeddings": rng.normal(0, 0.05, (2, 384)).round(6).tolist()}
        ).encode(),
        "recommender answer (k=10)": json.dumps(
            {
                "user_id": "196",
                "items": [
                    {"item_id": str(i), "title": f"Movie title number {i} (1995)", "score": round(float(s), 6)}
                    for i, s in enumerate(rng.normal(size=10))
                ],
            }
        ).encode(),
    }


def timed(fn, data: bytes, repeat: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn(data)
    return (time.perf_counter() - start) / repeat


def main() -> int:
    rows = []
    for name, body in {**request_bodies(), **response_bodies()}.items():
        packed = zlib.compress(body, 1)
        cost = timed(lambda b: zlib.compress(b, 1), body) + timed(zlib.decompress, packed)
        saved = len(body) - len(packed)
        rows.append(
            (name, len(body), len(packed) / len(body), cost * 1e6, saved * 8 / cost / 1e6 if saved > 0 else 0.0)
        )
    print(f"{'body':28} {'bytes':>8} {'deflated':>9} {'cost us':>8} {'pays below':>12}")
    for name, size, ratio, cost_us, mbit in rows:
        verdict = f"{mbit:8.0f} Mbit/s" if mbit else "   never"
        print(f"{name:28} {size:8,} {ratio:8.0%} {cost_us:8.1f} {verdict:>12}")
    print(
        "\n'deflated': compressed size / size; 'cost': compress + decompress, one core; 'pays below': the link "
        "speed under which the bytes saved take longer to send than compression takes."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
