"""`torchship bench`: a load test of one model, with latency percentiles.

For streaming models also time to first token and tokens (chunks' characters) per second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from torchship.perf import wrk
from torchship.perf.load import LoadResult, percentile, run_load, run_threads
from torchship.sdk.errors import APIError, TorchServeError

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = ["bench", "bench_stream", "plot_latencies", "wrk_load"]


@overload
def bench(
    client: TorchServe,
    name: str,
    payloads: Sequence[Any],
    *,
    version: str | None = ...,
    concurrency: int = ...,
    duration: float | None = ...,
    requests: int | None = ...,
    keep: Literal[False] = ...,
    engine: str = ...,
) -> dict[str, Any]: ...


@overload
def bench(
    client: TorchServe,
    name: str,
    payloads: Sequence[Any],
    *,
    version: str | None = ...,
    concurrency: int = ...,
    duration: float | None = ...,
    requests: int | None = ...,
    keep: Literal[True],
    engine: str = ...,
) -> tuple[dict[str, Any], LoadResult | None]: ...


def bench(
    client: TorchServe,
    name: str,
    payloads: Sequence[Any],
    *,
    version: str | None = None,
    concurrency: int = 4,
    duration: float | None = 10.0,
    requests: int | None = None,
    keep: bool = False,
    engine: str = "python",
) -> dict[str, Any] | tuple[dict[str, Any], LoadResult | None]:
    """Figures of a load test (and, with keep, the LoadResult for plotting; python engine only).

    engine "wrk" sends the first payload with wrk for `duration` seconds (see torchship.perf.wrk);
    "python" uses the client's pooled sessions in threads; "auto" picks wrk when installed and
    the test is by duration.
    """
    if engine == "auto":
        engine = "wrk" if wrk.available() and not requests else "python"
    if engine == "wrk":
        figures = {
            "model": name,
            "version": version,
            "concurrency": concurrency,
            "engine": "wrk",
            **wrk_load(client, name, payloads[0], version=version, concurrency=concurrency, seconds=duration or 10.0),
        }
        return (figures, None) if keep else figures
    result = run_load(
        client,
        name,
        payloads,
        version=version,
        concurrency=concurrency,
        requests=requests,
        duration=None if requests else duration,
    )
    figures = {"model": name, "version": version, "concurrency": concurrency, "engine": "python", **result.to_dict()}
    return (figures, result) if keep else figures


def wrk_load(
    client: TorchServe, name: str, payload: Any, *, version: str | None, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One wrk run against a model through the client's address and inference key."""
    body, headers = client.encode_body(payload)  # as the client sends it (gzipped if it compresses)
    content_type = headers.pop("Content-Type")
    url = client.prediction_url(name, version)
    key = client.keys.key("inference")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return wrk.run(url, body, seconds=seconds, concurrency=concurrency, content_type=content_type, headers=headers)


def plot_latencies(result: LoadResult, path: Path, title: str) -> None:
    """Latency over time (each request at its completion) and the latency histogram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot(result.completed_s, result.latencies_ms, ".", markersize=2, alpha=0.5)
    ax1.set_xlabel("seconds into the test")
    ax1.set_ylabel("latency ms")
    ax1.set_title("latency over time")
    ax2.hist(result.latencies_ms, bins=60)
    for q, style in ((50, "--"), (99, ":")):
        ax2.axvline(result.p(q), color="k", linestyle=style, label=f"p{q} {result.p(q):.1f} ms")
    ax2.set_xlabel("latency ms")
    ax2.set_title("histogram")
    ax2.legend()
    fig.suptitle(f"{title}: {result.throughput:.0f} req/s, {result.failed} failed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bench_stream(
    client: TorchServe,
    name: str,
    payloads: Sequence[Any],
    *,
    version: str | None = None,
    concurrency: int = 1,
    duration: float | None = 10.0,
    requests: int | None = None,
) -> dict[str, Any]:
    """Load-test a streaming model: per stream, time to first chunk, total time and characters received."""
    lock = threading.Lock()
    counter = iter(range(10**12))
    first: list[float] = []
    totals: list[float] = []
    rates: list[float] = []
    chars: list[int] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration if duration and not requests else None

    def worker() -> None:
        while True:
            with lock:
                i = next(counter)
            if (requests is not None and i >= requests) or (deadline and time.monotonic() >= deadline):
                return
            start = time.perf_counter()
            got, ttft = 0, None
            try:
                for chunk in client.stream(name, payloads[i % len(payloads)], version=version):
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    got += len(chunk)
            except TorchServeError as exc:
                key = str(exc.status) if isinstance(exc, APIError) else "unreachable"
                with lock:
                    errors[key] = errors.get(key, 0) + 1
                continue
            total = time.perf_counter() - start
            with lock:
                first.append(ttft * 1000 if ttft is not None else float("nan"))
                totals.append(total * 1000)
                chars.append(got)
                if ttft is not None and total > ttft:
                    rates.append(got / (total - ttft))

    seconds = run_threads(worker, concurrency)
    return {
        "model": name,
        "version": version,
        "concurrency": concurrency,
        "streams": len(totals),
        "errors": errors,
        "ttft_p50_ms": round(percentile(first, 50), 2),
        "ttft_p99_ms": round(percentile(first, 99), 2),
        "total_p50_ms": round(percentile(totals, 50), 2),
        "total_p99_ms": round(percentile(totals, 99), 2),
        "tokens_per_s_per_stream": round(percentile(rates, 50), 1) if rates else None,
        "tokens_per_s_total": round(sum(chars) / seconds, 1) if seconds else None,
        "seconds": round(seconds, 2),
    }
