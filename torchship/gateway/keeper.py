"""The gateway's keeper: `python -m torchship.gateway.keeper GATEWAY_FOLDER`, started by `serve start --tls`.

Every second it makes nginx follow TorchServe's inference token (rotating it before it expires, and
reloading nginx when the key file holds a new one), keeps the access log bounded, and counts the requests
of each tenant in it, which it serves as Prometheus text on the gateway's metrics listener (plain HTTP,
loopback only: `GET /metrics`). It exits when the gateway's nginx is gone, and on SIGTERM (`serve stop`).
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main"]

INTERVAL_S = 1.0


def main(argv: list[str] | None = None) -> int:
    """Run the keeper of the gateway in the folder given as the one argument, until its nginx stops."""
    from torchship.ops.server import LocalServer
    from torchship.sdk.config import GATEWAY_STATE_FILE

    from .process import Gateway

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m torchship.gateway.keeper GATEWAY_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0]).resolve()
    state = json.loads((folder / GATEWAY_STATE_FILE).read_text(encoding="utf-8"))
    server_dir = Path(state["server"])
    # the server's effective config is in its working folder; LocalServer reads it from there
    gateway = Gateway(LocalServer(server_dir / "config.properties", server_dir), folder)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _say(f"keeping the gateway in {folder} (nginx pid {gateway.pid()})")
    if state.get("metrics_listen"):
        _serve_metrics(gateway, state["metrics_listen"])
    while gateway.is_running():
        try:
            for note in gateway.maintain():
                _say(note)
        except Exception:  # noqa: BLE001  a failed round is logged and tried again next second
            _say("round failed:\n" + traceback.format_exc())
        time.sleep(INTERVAL_S)
    _say("nginx is gone: keeper stops")
    return 0


def _serve_metrics(gateway: Any, where: str) -> None:
    """Serve the gateway's per-tenant counters (`gateway.metrics_text`) at http://WHERE/metrics, in a thread."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from .nginx import Listen

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "the gateway's metrics are at /metrics")
                return
            body = gateway.metrics_text.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # a scrape is not news
            pass

    listen = Listen.parse(where)
    if not listen.loopback:
        _say(f"metrics not served: {where} is not a loopback address")
        return
    try:
        server = ThreadingHTTPServer((listen.host, listen.port), Metrics)
    except OSError as exc:
        _say(f"metrics not served: cannot listen on {where}: {exc}")
        return
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    _say(f"per-tenant metrics at http://{where}/metrics")


def _say(text: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
