"""Packaging speed, side by side in one run: a large checkpoint packed (built + signed) against
copying the same file on the same disk. Both are durable (fsync'd): an archive is only built
once it would survive a crash, and a fair copy is measured the same way.

    .venv/bin/python benchmarks/bench_packaging.py [--size-mib 1024] [--repeat 3] [--archiver]
        [--load-repeat 7] [--embedder data/embedder]

Prints a table of median seconds and ratios to the durable copy, and writes a PNG beside it.
`--archiver` also times torch-model-archiver's default (deflate) format, which is slow.

Then what encryption at rest costs (`torchship package --encrypt`, handlers/torchship_crypto.py),
in the same run: encrypt and decrypt throughput (GiB/s) of the same weights' bytes in memory
beside a plain copy and the sha256 of those bytes, with ratios (a shared machine is noisy: the
ratios hold better than the absolute figures); and the load of the embedder's real weights as a
worker does it at initialize, plain (safetensors `load_file` + `load_state_dict`) against
encrypted (read + `decrypt_stream` into one buffer + the base handler's `tensors_in`, views of
that buffer, + `load_state_dict`), exactly as `torchship_base_handler.load_weights` does it.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from torchship import archiver  # noqa: E402
from torchship.archiver.model_keys import ensure_keyring, load_keyring  # noqa: E402
from torchship.handlers import torchship_crypto  # noqa: E402
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
    parser.add_argument("--load-repeat", type=int, default=7, help="runs of each embedder load (median)")
    parser.add_argument("--embedder", type=Path, default=ROOT / "data" / "embedder", help="its weights (make data)")
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
        model_keys = load_keyring(ensure_keyring(keys)[0])
        package_encrypted = timed(
            lambda i: archiver.sign(
                archiver.build(spec_for(run, i), work / "enc", progress=quiet, model_key=model_keys).path, keys
            ),
            args.repeat,
            lambda i: remove(work / "enc" / f"mlp-1.{i}.mar"),
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
            ("  same, --encrypt (AES-256-GCM)", package_encrypted),
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
        print(f"package --encrypt / package = {statistics.median(package_encrypted) / statistics.median(package):.2f}x")
        _plot(rows, base, args)
        encryption_throughput(weights, args)
        embedder_load(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def interleaved(steps: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Each step's times, the steps taken in turn within each round: on a shared machine a noisy
    stretch then slows every step of a round, not all runs of one, and the ratios hold."""
    out: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeat):
        for name, fn in steps.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return out


def encryption_throughput(weights: Path, args) -> None:
    """GiB/s of a copy, sha256, encrypt and decrypt of the same bytes, all in memory, in one run."""
    data = weights.read_bytes()
    size = len(data)
    key = torchship_crypto.new_key()
    sealed: list[bytes] = []
    torchship_crypto.encrypt_stream(io.BytesIO(data).read, sealed.append, key, size=size, plaintext_name=weights.name)
    ciphertext = b"".join(sealed)
    del sealed
    assert torchship_crypto.decrypt_stream(io.BytesIO(ciphertext).read, key) == data

    def encrypt() -> None:  # as packaging does, chunk by chunk; the sealed chunks kept, as a file would
        out: list[bytes] = []
        torchship_crypto.encrypt_stream(io.BytesIO(data).read, out.append, key, size=size, plaintext_name=weights.name)

    times = interleaved(
        {
            "copy into a new buffer": lambda: bytearray(data),
            "sha256": lambda: hashlib.sha256(data).digest(),
            "encrypt (encrypt_stream)": encrypt,
            # as the worker: chunk by chunk from the member, into memory
            "decrypt into memory (decrypt_stream)": lambda: torchship_crypto.decrypt_stream(
                io.BytesIO(ciphertext).read, key
            ),
        },
        args.repeat,
    )
    copy, sha = statistics.median(times["copy into a new buffer"]), statistics.median(times["sha256"])
    print(
        f"\nencryption at rest: the same {size / 2**20:.0f} MiB in memory, median of {args.repeat}, steps in turn "
        f"({torchship_crypto.CIPHER}, {torchship_crypto.CHUNK >> 20} MiB chunks; ratios of times)"
    )
    print(f"{'step':38} {'GiB/s':>7} {'vs copy':>8} {'vs sha256':>10}   all runs (s)")
    for name, runs in times.items():
        med = statistics.median(runs)
        print(
            f"{name:38} {size / 2**30 / med:7.2f} {med / copy:7.2f}x {med / sha:9.2f}x   "
            + " ".join(f"{t:.3f}" for t in runs)
        )


def embedder_load(work: Path, args) -> None:
    """What a worker does at initialize with the embedder's real weights, plain and encrypted."""
    from safetensors.torch import load_file

    from torchship.handlers import HANDLER_DIR, torchship_models

    sys.path.insert(0, str(HANDLER_DIR))  # the base handler imports its helpers flat, as in a worker
    from torchship_base_handler import tensors_in

    from torchship.train import embedder

    if not (args.embedder / "model.safetensors").is_file():
        print(f"\n(no embedder load: {args.embedder}/model.safetensors is missing: make data)", file=sys.stderr)
        return
    run = embedder.train(work / "embedder", data_dir=args.embedder, progress=False).run_dir
    plain_file = run / "model.safetensors"
    arch = json.loads((run / "meta.json").read_text())["model"]["architecture"]
    model = torchship_models.build("embedder", arch)
    key = torchship_crypto.new_key()
    sealed_file = work / "model.safetensors.tsenc"
    size = plain_file.stat().st_size
    with open(plain_file, "rb") as src, open(sealed_file, "wb") as dst:
        torchship_crypto.encrypt_stream(src.read, dst.write, key, size=size, plaintext_name=plain_file.name)

    def plain() -> None:
        model.load_state_dict(load_file(str(plain_file)))

    def encrypted() -> None:  # torchship_base_handler.load_weights on an encrypted member
        with open(sealed_file, "rb") as f:
            data = torchship_crypto.decrypt_stream(f.read, key, member=sealed_file.name)
        model.load_state_dict(tensors_in(data))

    def decrypt_only() -> None:
        with open(sealed_file, "rb") as f:
            torchship_crypto.decrypt_stream(f.read, key)

    for fn in (plain, encrypted):  # page cache warm for both: a worker's archive was just unpacked
        fn()
    times = interleaved(
        {
            "plain: load_file + load_state_dict": plain,
            "encrypted: decrypt + tensors_in + load_state_dict": encrypted,
            "  of which read + decrypt_stream": decrypt_only,
        },
        args.load_repeat,
    )
    base = statistics.median(times["plain: load_file + load_state_dict"])
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"\nembedder load ({size / 1e6:.1f} MB of weights, {params:.1f}M parameters) as a worker's initialize "
        f"does it, median of {args.load_repeat}, loads in turn (ms; ratio to plain)"
    )
    print(f"{'load':46} {'median ms':>9} {'ratio':>7}   all runs")
    for name, runs in times.items():
        med = statistics.median(runs)
        print(f"{name:46} {med * 1e3:9.1f} {med / base:6.2f}x   " + " ".join(f"{t * 1e3:.1f}" for t in runs))
    extra = statistics.median(times["encrypted: decrypt + tensors_in + load_state_dict"]) - base
    print(f"encrypted - plain = {extra * 1e3:+.1f} ms per worker load")


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
