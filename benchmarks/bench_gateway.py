"""What the TLS gateway costs: one model served directly and through the gateway (nginx, TLS 1.3), side by side.

    .venv/bin/python benchmarks/bench_gateway.py [--model mlp] [--seconds 5] [--rounds 3]

One TorchServe (torchship's config, its own ports and folder) serving the model as the demo deploys it
(one worker, batch 8, 1 ms), and its gateway (`serve start --tls`: the project's CA, the owner key, no
rate limit). wrk loads TorchServe's own inference address and then the gateway's https address, at 16
callers and at 1, the rounds interleaved so that a noisy stretch slows both; wrk keeps its connections
open, so this is the steady cost (encryption, the proxy hop), not the handshake. Then the thin Python
client, one caller, kept-alive: `predict` directly and through the gateway; and the handshake itself:
each request on a new connection (plain TCP vs TCP + TLS). Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_defaults import packaged, payload  # noqa: E402

from torchship import LocalServer, TorchServe  # noqa: E402
from torchship.archiver.examples import EXAMPLES  # noqa: E402
from torchship.gateway import Gateway  # noqa: E402
from torchship.ops.server import free_port_overrides, free_ports  # noqa: E402
from torchship.perf import wrk  # noqa: E402
from torchship.perf.curve import load_point  # noqa: E402


def client_ms(client: TorchServe, name: str, body: object, n: int) -> float:
    """Median milliseconds of one `predict` of a lone caller on a kept-alive connection."""
    client.predict(name, body)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.predict(name, body)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def fresh_connection_ms(url: str, path: str, key: str, body: bytes, ca: Path | None, n: int) -> float:
    """Median milliseconds of one request on a connection of its own (connect, TLS handshake when https)."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    tls = ssl.create_default_context(cafile=str(ca)) if ca else None
    times = []
    for _ in range(n):
        t = time.perf_counter()
        if tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, int(port), context=tls, timeout=30)
        else:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(
            "POST", path, body=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200, resp.status
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=500, help="Python client calls per way (one caller).")
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed: run `make os` (or scripts/setup-os.sh wrk)")
    serving = EXAMPLES[args.model].serving
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        store, archive = packaged(args.model, work)
        server = LocalServer(
            ROOT / "config.properties", work / "server", model_store=store, overrides=free_port_overrides()
        )
        server.start(timeout=120)
        gateway = Gateway(server)
        try:
            with server.client() as direct:
                direct.register(
                    archive.name,
                    initial_workers=serving["workers"],
                    batch_size=serving["batch_size"],
                    max_batch_delay=serving["max_batch_delay"],
                )
                direct.wait_until_ready(args.model, timeout=120)
                gateway.start(listen=f"127.0.0.1:{free_ports(1)[0]}")
                through = TorchServe.from_config(server.effective_config_path, gateway=True)
                clients = {"direct": direct, "gateway": through}
                body = [payload(args.model)]
                for client in clients.values():  # warm-up: worker, both keep-alive pools
                    load_point(client, args.model, body, concurrency=16, seconds=2, engine="wrk")
                figures: dict[tuple[str, int], list] = {(label, c): [] for label in clients for c in (16, 1)}
                for r in range(args.rounds):
                    for c in (16, 1):
                        for label, client in clients.items():
                            p = load_point(client, args.model, body, concurrency=c, seconds=args.seconds, engine="wrk")
                            figures[(label, c)].append(p)
                            print(
                                f"round {r + 1}/{args.rounds}  {label:<8} c{c:<3} {p.throughput:8.1f} req/s  "
                                f"p50 {p.p50_ms:6.2f}  p99 {p.p99_ms:7.2f}"
                                + (f"  {p.failed} failed" if p.failed else ""),
                                flush=True,
                            )
                py = {label: client_ms(client, args.model, body[0], args.calls) for label, client in clients.items()}
                raw, _ = direct.encode_body(body[0])
                path = f"/predictions/{args.model}"
                fresh = {
                    "direct": fresh_connection_ms(
                        direct.urls["inference"], path, direct.keys.key("inference") or "", raw, None, 200
                    ),
                    "gateway": fresh_connection_ms(
                        through.urls["inference"], path, through.keys.key("inference") or "", raw, through.ca_file, 200
                    ),
                }
                tls_version = through._direct("inference").conn.sock.version()  # type: ignore[union-attr]
                through.close()
        finally:
            gateway.stop()
            server.stop()
    med = {
        k: (
            statistics.median(p.throughput for p in v),
            statistics.median(p.p50_ms for p in v),
            statistics.median(p.p99_ms for p in v),
        )
        for k, v in figures.items()
    }
    print(f"\n{args.model}: median of {args.rounds} rounds of {args.seconds:g} s, wrk (req/s, p50 ms, p99 ms)")
    for c in (16, 1):
        a, b = med[("direct", c)], med[("gateway", c)]
        print(
            f"  {c:>2} callers: direct {a[0]:8.1f} / {a[1]:.2f} / {a[2]:.2f}   gateway ({tls_version}) {b[0]:8.1f} / "
            f"{b[1]:.2f} / {b[2]:.2f}   throughput {b[0] / a[0]:.3f}x, p50 +{b[1] - a[1]:.2f} ms"
        )
    print(
        f"  python client, 1 caller, kept alive: direct {py['direct']:.2f} ms, gateway {py['gateway']:.2f} ms "
        f"(+{py['gateway'] - py['direct']:.2f} ms)"
    )
    print(
        f"  a new connection per request: direct {fresh['direct']:.2f} ms, gateway {fresh['gateway']:.2f} ms "
        f"(+{fresh['gateway'] - fresh['direct']:.2f} ms: TCP + TLS handshake and the proxy)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
