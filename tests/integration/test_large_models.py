"""The large-model examples on a real TorchServe: the pretrained embedder, and streamed generation."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from torchship import archiver
from torchship import errors as E
from torchship.perf.bench import bench_stream

from .conftest import deploy_example

pytestmark = pytest.mark.integration
TORCHSHIP = str(Path(sys.executable).parent / "torchship")


@pytest.fixture(scope="module")
def large(client, store, key_dir, public_key, embedder_run, textgen_run):
    for name, run in (("embedder", embedder_run), ("textgen", textgen_run)):
        archiver.package(archiver.example_spec(name, run, "1.0"), store, key_dir, force=True)
        deploy_example(client, store, name, public_key)
    yield
    for name in ("embedder", "textgen"):
        client.unregister(name, "1.0")


def test_embedder_reproduces_the_reference(client, large):
    a, b = np.array(
        client.predict("embedder", {"texts": ["A man is eating food.", "A man is eating a piece of bread."]})[
            "embeddings"
        ]
    )
    assert 0.70 <= float(a @ b) <= 0.80
    ranked = client.predict(
        "embedder",
        {
            "query": "A man is eating food.",
            "candidates": [
                "A man is riding a horse.",
                "A man is eating a piece of bread.",
                "The new movie is awesome.",
            ],
        },
    )["ranked"]
    assert [r["index"] for r in ranked][0] == 1 and ranked[0]["score"] > ranked[1]["score"] > ranked[2]["score"]


def test_embedder_batches_concurrent_requests(client, large):
    texts = [f"sentence number {i} about a film" for i in range(8)]
    alone = [client.predict("embedder", {"texts": [t]})["embeddings"][0] for t in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: client.predict("embedder", {"texts": [t]})["embeddings"][0], texts))
    assert np.allclose(together, alone, atol=1e-5)
    for bad in ({"texts": []}, {"texts": [1]}, {"query": "q"}, {"texts": ["x"] * 65}):
        with pytest.raises(E.BadRequest):
            client.predict("embedder", bad)


def test_streaming_is_real_the_first_chunk_comes_well_before_the_last(client, large):
    start, arrivals, chunks = time.perf_counter(), [], []
    for chunk in client.stream("textgen", {"prompt": "This film", "max_new_tokens": 400, "seed": 7}):
        arrivals.append(time.perf_counter() - start)
        chunks.append(chunk)
    assert len(chunks) >= 20
    assert arrivals[0] < 0.25 * arrivals[-1], (arrivals[0], arrivals[-1])
    assert len("".join(chunks)) == 400


def test_same_seed_same_text_and_limits(client, large):
    def text(**kw):
        return "".join(client.stream("textgen", {"prompt": "The plot", "max_new_tokens": 60, **kw}))

    assert text(seed=1) == text(seed=1)
    assert text(seed=1) != text(seed=2)
    # a gzipped body (a client with compress_min_bytes) streams the same text
    from torchship import TorchServe

    packing = TorchServe(
        client.urls["management"],
        client.urls["inference"],
        client.urls["metrics"],
        keys=client.keys,
        compress_min_bytes=1,
    )
    assert "".join(packing.stream("textgen", {"prompt": "The plot", "max_new_tokens": 60, "seed": 1})) == text(seed=1)
    assert text(temperature=0) == text(temperature=0, seed=99)
    for bad, message in [
        ({"max_new_tokens": 501}, "max_new_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"prompt": 5}, "prompt"),
    ]:
        with pytest.raises(E.BadRequest, match=message):
            list(client.stream("textgen", {"prompt": "The plot", **bad}))


def test_cli_streams_and_bench_reports_time_to_first_token(server, client, large):
    r = subprocess.run(
        [
            TORCHSHIP,
            "--config",
            str(server.effective_config_path),
            "predict",
            "textgen",
            "--stream",
            "--json",
            json.dumps({"prompt": "A", "max_new_tokens": 40, "seed": 3}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and len(r.stdout) == 41 and r.stdout.endswith("\n")  # 40 characters and a newline
    figures = bench_stream(client, "textgen", [{"prompt": "The", "max_new_tokens": 100}], requests=6, concurrency=2)
    assert figures["streams"] == 6 and not figures["errors"]
    assert 0 < figures["ttft_p50_ms"] < figures["total_p50_ms"] and figures["tokens_per_s_per_stream"] > 0
