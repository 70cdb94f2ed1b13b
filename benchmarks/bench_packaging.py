"""Packaging speed, side by side in one run: a large checkpoint packed (built + signed) against
copying the same file on the same disk. Both are durable (fsync'd): an archive is only built
once it would survive a crash, and a fair copy is measured the same way.

    .venv/bin/python benchmarks/bench_packaging.py [--size-mib 1024] [--repeat 3] [--archiver]

Prints a table of median seconds and ratios to the durable copy, and writes a PNG beside it.
`--archiver` also times torch-model-archiver's default (deflate) format, which is slow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from torchship import archiver  # noqa: E402
from torchship.train.common import save_weights  # noqa: E402


def timed(fn, repeat: int, cleanup=None) -> list[float]:
    """fn(i) for i in range(repeat), each started with no dirty pages left by the one before;
    `cleanup(i)` (untimed) removes what it wrote, so 1 GiB outputs do not pile up and push the
    input out of the page cache."""
    out = []
    for i in range(repeat):
        os.sync()
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
        if cleanup:
            cleanup(i)
    return out


def remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def spec_for(run: Path, i: int):
    # a new version each time, as a real release is (replacing an archive also costs an unlink)
    return archiver.example_spec("mlp", run, f"1.{i}")


def durable_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / ".torchship" / "bench")
    parser.add_argument("--archiver", action="store_true", help="also time torch-model-archiver's default format")
    parser.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "results" / "packaging.png")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pack-", dir=args.dir))
    try:
        run = work / "run"
        run.mkdir()
        print(f"writing a {args.size_mib} MiB checkpoint (random float32, incompressible) ...", file=sys.stderr)
        gen = torch.Generator().manual_seed(0)
        # written the way `torchship train` writes weights (which records their sha256)
        save_weights(run, {"weight": torch.randn(args.size_mib * 2**20 // 4, generator=gen)})
        (run / "meta.json").write_text(
            '{"model": {"kind": "mlp", "architecture": {}}, "created": "2026-01-01T00:00:00+00:00"}'
        )
        weights = run / "model.safetensors"
        # the same bytes as a checkpoint from elsewhere: no recorded digest, so packaging hashes them
        foreign = work / "foreign"
        foreign.mkdir()
        shutil.copyfile(weights, foreign / "model.safetensors")
        shutil.copyfile(run / "meta.json", foreign / "meta.json")
        store, keys = work / "store", work / "keys"
        archiver.ensure_keys(keys)
        spec = spec_for(run, 0)
        quiet = lambda *a: None  # noqa: E731  (progress bars would pollute the timing output)

        rows = []
        copy_cache = timed(
            lambda i: shutil.copyfile(weights, work / "c.bin"), args.repeat, lambda i: remove(work / "c.bin")
        )
        copy = timed(lambda i: durable_copy(weights, work / "c.bin"), args.repeat, lambda i: remove(work / "c.bin"))
        build = timed(
            lambda i: archiver.build(spec_for(run, i), work / "built", progress=quiet),
            args.repeat,
            lambda i: remove(work / "built" / f"mlp-1.{i}.mar"),
        )
        package = timed(
            lambda i: archiver.package(spec_for(run, i), store, keys, progress=quiet),
            args.repeat,
            lambda i: i < args.repeat - 1 and remove(store / f"mlp-1.{i}.mar"),
        )
        package_foreign = timed(
            lambda i: archiver.package(spec_for(foreign, i), work / "fs", keys, progress=quiet),
            args.repeat,
            lambda i: remove(work / "fs" / f"mlp-1.{i}.mar"),
        )
        pub = archiver.public_key_path(keys)
        last = store / f"mlp-1.{args.repeat - 1}.mar"
        verify = timed(lambda i: archiver.ensure_verified(last, public_key=pub), args.repeat)
        base = statistics.median(copy)
        rows = [
            ("copy (page cache, no fsync)", copy_cache),
            ("copy (durable: fsync)", copy),
            ("torchship build (durable)", build),
            ("torchship package = build + sign", package),
            ("  same, foreign checkpoint (hashes weights)", package_foreign),
            ("torchship verify", verify),
        ]
        if args.archiver:
            from model_archiver.model_archiver_config import ModelArchiverConfig
            from model_archiver.model_packaging import generate_model_archive

            cfg = ModelArchiverConfig(
                model_name="mlpdeflate",
                handler=str(spec.handler),
                version="1.0",
                serialized_file=str(weights),
                export_path=str(work),
                force=True,
            )
            rows.append(("torch-model-archiver default (deflate)", timed(lambda i: generate_model_archive(cfg), 1)))

        print(f"\n{args.size_mib} MiB checkpoint, median of {args.repeat} (seconds; ratio to the durable copy)")
        print(f"{'step':42} {'median s':>9} {'ratio':>7}   all runs")
        for name, times in rows:
            med = statistics.median(times)
            print(f"{name:42} {med:9.2f} {med / base:7.2f}x   " + " ".join(f"{t:.2f}" for t in times))
        for label, times in (("package", package), ("package, foreign checkpoint", package_foreign)):
            ratio = statistics.median(times) / base
            print(f"{label} / durable copy = {ratio:.2f}x (target: at most 2x) -> {'MET' if ratio <= 2 else 'NOT MET'}")
        _plot(rows, base, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _plot(rows, base, args) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"(no plot: {exc})", file=sys.stderr)
        return
    names = [n for n, _ in rows]
    meds = [statistics.median(t) for _, t in rows]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2))
    bars = ax.barh(names[::-1], meds[::-1], color="#4c72b0")
    for bar, med in zip(bars, meds[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {med:.2f} s ({med / base:.2f}x)", va="center")
    ax.set_xlabel("seconds (median)")
    ax.set_title(f"Packaging a {args.size_mib} MiB checkpoint vs copying it")
    ax.set_xlim(0, max(meds) * 1.35)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"plot: {args.png}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
