"""Attacks on the live rollout (`torchship rollout NAME --version V --live`) through a real nginx in front of the
session's real TorchServe: what the callers of the split model, and of everything else, see while a candidate is
judged on their traffic.

atk 1.0 is the default (the session's mlp), 2.0 fails every request (TorchServe answers 503), 3.0 and 5.0 echo
the body back ({"echo": ...}): an answer says which arm gave it. atk-other 1.0 echoes and its 2.0 is the mlp.
The CLI runs in a project folder whose .torchship/ points at the session's server, keys and capture folder, and
holds this module's gateway."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from torchship import TorchServe, archiver
from torchship.archiver import ArchiveSpec, example_spec
from torchship.gateway import Gateway, Rate
from torchship.gateway.nginx import CANARY_PATH, SHADOW_PATH, SHADOWED_PATH, Split
from torchship.ops import capture as cap
from torchship.ops.deploy import deploy
from torchship.ops.registry import Registry
from torchship.ops.server import free_ports
from torchship.ops.takedown import unregister_after_load
from torchship.sdk.auth import StaticKeys
from torchship.sdk.errors import ConfigError

from .conftest import NEEDS_NGINX, ROOT, Caller, Callers

pytestmark = [
    pytest.mark.integration,
    NEEDS_NGINX,
]
TORCHSHIP = str(Path(sys.executable).parent / "torchship")
NAME, OTHER, STREAM = "atk", "atk-other", "atk-stream"
MLP = {"data": [0.25] * 100}
BODY = json.dumps(MLP).encode()
ALWAYS_FAILS = '''"""Fails every request: TorchServe answers 503 Prediction failed."""


class AlwaysFails:
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        raise RuntimeError("this version fails every request")
'''


def padded(size: int) -> bytes:
    """The mlp body, padded with JSON whitespace to `size` bytes: the same request, only larger."""
    text = json.dumps(MLP)
    return (text[:-1] + " " * (size - len(text)) + "}").encode()


def kind(body: bytes) -> str:
    """Which side answered: the mlp (default of atk), an echo (the candidates 3.0 and 5.0), or something else."""
    if b'"class_id"' in body:
        return "mlp"
    if b'"echo"' in body:
        return "echo"
    return body[:200].decode(errors="replace")


class Traffic(Callers):
    """Callers of /predictions/atk (no version named) through the gateway, counting (status, kind) of each answer."""

    def __init__(self, call: Caller, key: str, threads: int = 2) -> None:
        super().__init__(threads)
        self.call, self.key = call, key
        self.got: Counter[tuple[int, str]] = Counter()

    def _run(self, i: int) -> None:
        while not self.stop.is_set():
            try:
                status, _, body = self.call("POST", f"/predictions/{NAME}", self.key, BODY)
                self.got[status, kind(body)] += 1
            except Exception as exc:  # noqa: BLE001 - every failure a caller sees is counted
                self.got[0, type(exc).__name__] += 1


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def archives(tmp_path_factory, mlp_run, store, key_dir):
    """The signed archives of atk and atk-other (see the module docstring)."""
    folder = tmp_path_factory.mktemp("atk-handlers")
    (folder / "always_fails.py").write_text(ALWAYS_FAILS)
    mlp = example_spec("mlp", mlp_run, "1.0")
    echo = ROOT / "tests" / "fixtures" / "raising_handler.py"

    def as_mlp(name: str, version: str) -> ArchiveSpec:
        return ArchiveSpec(
            name, version, mlp.handler, mlp.weights, extra_files=mlp.extra_files, model_config=mlp.model_config
        )

    specs = [
        as_mlp(NAME, "1.0"),
        ArchiveSpec(NAME, "2.0", folder / "always_fails.py"),
        ArchiveSpec(NAME, "3.0", echo),
        ArchiveSpec(NAME, "5.0", echo),
        ArchiveSpec(OTHER, "1.0", echo),
        as_mlp(OTHER, "2.0"),
        ArchiveSpec(STREAM, "1.0", ROOT / "tests" / "fixtures" / "countdown_stream_handler.py"),
        ArchiveSpec(STREAM, "2.0", ROOT / "tests" / "fixtures" / "countdown_stream_handler.py"),
    ]
    for spec in specs:
        archiver.package(spec, store, key_dir, force=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, server, key_dir) -> Path:
    """A project folder the CLI works in: its .torchship/ points at the session's server, keys and capture."""
    root = tmp_path_factory.mktemp("atk-project")
    state = root / ".torchship"
    state.mkdir()
    shutil.copy(server.effective_config_path, root / "config.properties")
    server.capture_dir.mkdir(parents=True, exist_ok=True)
    (state / "server").symlink_to(server.workdir)
    (state / "keys").symlink_to(key_dir)
    (state / "capture").symlink_to(server.capture_dir)
    return root


@pytest.fixture(scope="module")
def gateway(server, client, store, public_key, archives, project):
    """This module's gateway (the project's: .torchship/gateway), with atk 1.0 and 3.0, atk-other 1.0 and 2.0."""
    for name, version in ((NAME, "1.0"), (NAME, "3.0"), (OTHER, "1.0"), (OTHER, "2.0")):
        deploy(client, store, name, version, public_key=public_key)
    gw = Gateway(server, project / ".torchship" / "gateway", project / ".torchship" / "tls")
    port, metrics_port = free_ports(2)  # (its own folder, not start_gateway's: test_live_rollout has that one)
    assert gw.start(listen=f"127.0.0.1:{port}", metrics_listen=f"127.0.0.1:{metrics_port}")
    try:
        yield gw
    finally:
        gw.stop()
        for name in (NAME, OTHER):
            for d in client.versions(name):
                if not d.is_default:
                    client.unregister(name, d.version)
            client.unregister(name)


@pytest.fixture(scope="module")
def call(gateway) -> Caller:
    return Caller(gateway.status().url, Path(gateway.state()["ca_file"]))


@pytest.fixture(scope="module")
def key(gateway) -> str:
    return gateway.tenants.owner_key()


class split:
    """A live split set on the gateway for the `with` block, ended after it whatever happened."""

    def __init__(self, gateway: Gateway, *splits: Split) -> None:
        self.gateway, self.splits = gateway, splits

    def __enter__(self) -> Gateway:
        for sp in self.splits:
            assert self.gateway.set_split(sp)
        return self.gateway

    def __exit__(self, *exc) -> None:
        for sp in self.splits:
            self.gateway.set_split(None, model=sp.model)


def log_after(gateway: Gateway, mark: int, until, timeout: float = 5.0) -> list[dict]:
    """The access-log entries after line `mark`, once `until(entries)` holds (nginx logs just after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = gateway.access_log.read_text().splitlines()[mark:]
        entries = [json.loads(line) for line in lines if line.strip()]
        if until(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def log_mark(gateway: Gateway) -> int:
    return len(gateway.access_log.read_text().splitlines())


def torchship(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TORCHSHIP_HOME": str(project)}
    for var in ("TS_MANAGEMENT_URL", "TS_INFERENCE_URL", "TS_METRICS_URL", "TS_KEY_FILE"):
        env.pop(var, None)
    return subprocess.Popen(
        [TORCHSHIP, *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a background job (CI run with &) would hand its ignored SIGINT down
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def live_split_recorded(project: Path, version: str) -> bool:
    with Registry(project / ".torchship" / "registry.db") as registry:
        return any(e.version == version for e in registry.events(NAME, kinds=("live_split",)))


def no_split_left(gateway: Gateway) -> None:
    conf = gateway.conf_path.read_text()
    assert gateway.splits() == ()
    assert CANARY_PATH not in conf and SHADOWED_PATH not in conf, "nginx.conf still splits"


# ------------------------------------------------------------------ the CLI: a failing candidate, Ctrl-C


def test_a_candidate_failing_every_request_is_rejected_at_the_errors_gate_and_no_caller_sees_it(
    client, gateway, call, key, project
):
    with Traffic(call, key) as traffic:
        proc = torchship(
            project,
            "rollout",
            NAME,
            "--version",
            "2.0",
            "--live",
            "--canary",
            "50",
            "--shadow",
            "100",
            "--duration",
            "3",
            "--min-requests",
            "10",
            "--json",
        )
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 11, out + err
    report = json.loads(out)
    assert report["gate"] == "errors" and not report["passed"], report
    f = report["figures"]
    assert f["canary_requests"] > 0 and f["shadow_requests"] > 0, f
    assert f["candidate"]["error_rate"] == 1.0 and f["default"]["errors"] == 0, f
    assert f["client_errors"] == 0, f
    assert "rejected at the errors gate" in err
    # every caller got the default's answer: the candidate's 503s were answered by 1.0
    assert traffic.got[200, "mlp"] > 50 and set(traffic.got) == {(200, "mlp")}, traffic.got
    assert client.describe(NAME)[0].version == "1.0"
    assert "2.0" not in {d.version for d in client.versions(NAME)}
    no_split_left(gateway)
    with Registry(project / ".torchship" / "registry.db") as registry:
        kinds = [e.kind for e in registry.events(NAME) if e.version == "2.0"]
    for k in ("rollout_started", "registered", "live_split", "live_judged", "rollout_failed", "unregistered"):
        assert k in kinds, kinds


def test_ctrl_c_ends_the_split_and_takes_the_candidate_away(server, client, gateway, call, key, project):
    folders = {v: server.capture_dir / NAME / v for v in ("1.0", "5.0")}
    before = {v: cap._settings(folder) for v, folder in folders.items()}
    with Traffic(call, key) as traffic:
        proc = torchship(project, "rollout", NAME, "--version", "5.0", "--live", "--canary", "50", "--duration", "30")
        try:
            # Ctrl-C once the split is in effect (recorded: set_split returned) and the candidate has answered
            deadline = time.monotonic() + 60
            while not live_split_recorded(project, "5.0"):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            while traffic.got[200, "echo"] < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1)
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, out + err
    assert took < 10, f"{took:.1f} s from Ctrl-C to exit"
    assert traffic.got[200, "echo"] >= 5 and traffic.got[200, "mlp"] > 0
    assert set(traffic.got) == {(200, "mlp"), (200, "echo")}, traffic.got
    no_split_left(gateway)
    assert client.describe(NAME)[0].version == "1.0"
    assert "5.0" not in {d.version for d in client.versions(NAME)}
    assert {v: cap._settings(folder) for v, folder in folders.items()} == before  # capture as it was
    with Registry(project / ".torchship" / "registry.db") as registry:
        kinds = [e.kind for e in registry.events(NAME) if e.version == "5.0"]
    for k in ("rollout_started", "live_split", "rollout_interrupted", "unregistered"):
        assert k in kinds, kinds
    assert not {"rollout_failed", "rollout_passed", "promoted"} & set(kinds), kinds
    # and the default alone answers again
    status, _, body = call("POST", f"/predictions/{NAME}", key, BODY)
    assert status == 200 and kind(body) == "mlp"


# ------------------------------------------------------------------ what is split, and what is not


def test_only_predictions_of_the_model_with_no_version_are_split_or_mirrored(gateway, call, key):
    mark = log_mark(gateway)
    with split(gateway, Split(NAME, "3.0", 50, 100)):
        split_kinds = Counter(kind(call("POST", f"/predictions/{NAME}", key, BODY)[2]) for _ in range(30))
        named = Counter(kind(call("POST", f"/predictions/{NAME}/1.0", key, BODY)[2]) for _ in range(20))
        other = Counter(kind(call("POST", f"/predictions/{OTHER}", key, BODY)[2]) for _ in range(20))
        prefixed = Counter(call("POST", f"/predictions/{NAME}x", key, BODY)[0] for _ in range(10))
        v2_body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 100], "datatype": "FP32", "data": MLP["data"]}]}
        ).encode()
        v2 = [call("POST", f"/v2/models/{NAME}/infer", key, v2_body) for _ in range(10)]
        explained = Counter(kind(call("POST", f"/explanations/{NAME}", key, BODY)[2]) for _ in range(5))
    assert split_kinds["echo"] > 0 and split_kinds["mlp"] > 0, split_kinds  # the split was live
    assert named == {"mlp": 20}, named
    assert other == {"echo": 20}, other  # atk-other's own default (an echo), never atk's candidate
    assert prefixed == {404: 10}, prefixed
    # the v2 route is never split (a gap: a candidate is judged on, and promoted for, /predictions only)
    assert all(status == 200 and json.loads(body)["model_version"] == "1.0" for status, _, body in v2), v2
    assert explained == {"mlp": 5}, explained  # nor /explanations

    entries = log_after(gateway, mark, lambda es: sum(e["path"] == f"/explanations/{NAME}" for e in es) >= 5)
    main = [e for e in entries if e["path"] != SHADOW_PATH]
    shadowed = {e["request_id"] for e in main if e["path"] == SHADOWED_PATH and e["arm"] == "shadow"}
    mirrored = {e["request_id"] for e in entries if e["path"] == SHADOW_PATH}
    assert shadowed and mirrored == shadowed  # only the model's shadow draws were mirrored (and logged)
    for e in main:
        if e["path"] not in (f"/predictions/{NAME}", CANARY_PATH, SHADOWED_PATH):  # (the rewritten paths)
            assert e["live"] == "" and e["arm"] == "" and e["request_id"] not in mirrored, e


def test_large_and_chunked_bodies_get_the_same_answer_on_every_arm(gateway, client, store, public_key, call, key):
    under = padded(3_900_000)  # the mlp takes it
    over_model = padded(4_300_000)  # over the mlp's own 4 MiB: its 413
    over_gateway = padded(7_000_000)  # over max_request_size: the gateway's 413

    def answers() -> list[tuple[int, bytes]]:
        out = [call("POST", f"/predictions/{NAME}", key, body)[::2] for body in (BODY, under, over_model, over_gateway)]
        return out + [call.chunked(f"/predictions/{NAME}", key, BODY)]

    plain = answers()
    assert [s for s, _ in plain] == [200, 200, 413, 413, 411], plain
    assert kind(plain[1][1]) == "mlp" and b"PayloadTooLarge" in plain[2][1] and b"LengthRequired" in plain[4][1]
    assert plain[2][1] != plain[3][1]  # the model's 413 and the gateway's are told apart
    deploy(client, store, NAME, "2.0", public_key=public_key)
    try:
        with split(gateway, Split(NAME, "2.0", 100, 0)):
            fell_back = answers()  # every request drawn to 2.0, which fails: the default answers, body and all
        with split(gateway, Split(NAME, "3.0", 0, 100)):
            shadowed = answers()
        with split(gateway, Split(NAME, "3.0", 100, 0)):
            canary = answers()
    finally:
        unregister_after_load(client, NAME, version="2.0")
    assert fell_back == plain
    assert shadowed == plain
    # the candidate itself takes a body as large as the default does, and the edge's limits are the same
    assert [s for s, _ in canary] == [200, 200, 200, 413, 411], canary
    assert kind(canary[1][1]) == "echo" and canary[3:] == plain[3:]


def test_a_named_client_always_lands_on_the_same_arm(gateway, call, key):
    with split(gateway, Split(NAME, "3.0", 50, 0)):
        arms = {
            client_id: Counter(
                kind(call("POST", f"/predictions/{NAME}", key, BODY, X_Torchship_Client=client_id)[2]) for _ in range(3)
            )
            for client_id in (f"client-{i}" for i in range(30))
        }
        unnamed = Counter(kind(call("POST", f"/predictions/{NAME}", key, BODY)[2]) for _ in range(30))
    assert all(len(seen) == 1 for seen in arms.values()), arms
    landed = Counter(next(iter(seen)) for seen in arms.values())
    assert set(landed) == {"mlp", "echo"}, landed  # and the clients are spread over both arms
    assert set(unnamed) == {"mlp", "echo"}, unnamed  # without a name, each request is drawn


def test_two_models_split_at_once_are_ended_one_by_one(gateway, call, key):
    with split(gateway, Split(NAME, "3.0", 100, 0), Split(OTHER, "2.0", 100, 0)):
        assert {sp.model for sp in gateway.splits()} == {NAME, OTHER}
        assert kind(call("POST", f"/predictions/{NAME}", key, BODY)[2]) == "echo"
        assert kind(call("POST", f"/predictions/{OTHER}", key, BODY)[2]) == "mlp"  # atk-other's candidate
        gateway.set_split(None, model=NAME)
        assert [sp.model for sp in gateway.splits()] == [OTHER]
        assert kind(call("POST", f"/predictions/{NAME}", key, BODY)[2]) == "mlp"
        assert kind(call("POST", f"/predictions/{OTHER}", key, BODY)[2]) == "mlp"
    no_split_left(gateway)
    assert kind(call("POST", f"/predictions/{OTHER}", key, BODY)[2]) == "echo"


def test_rate_limits_and_revoked_keys_hold_on_the_candidate_arm(gateway, call, key):
    def burst(tenant_key: str) -> list[tuple[int, str]]:
        out = []
        for _ in range(5):
            status, headers, body = call("POST", f"/predictions/{NAME}", tenant_key, BODY)
            out.append((status, kind(body) if status == 200 else headers.get("retry-after", "")))
        return out

    _, plain_key = gateway.add_tenant("atk-plain", rate=Rate.parse("1/m", 2))
    plain = burst(plain_key)
    with split(gateway, Split(NAME, "3.0", 100, 0)):
        _, limited_key = gateway.add_tenant("atk-limited", rate=Rate.parse("1/m", 2))
        _, revoked_key = gateway.add_tenant("atk-revoked")
        limited = burst(limited_key)
        assert kind(call("POST", f"/predictions/{NAME}", revoked_key, BODY)[2]) == "echo"
        assert gateway.revoke_tenant("atk-revoked")
        status, _, body = call("POST", f"/predictions/{NAME}", revoked_key, BODY)
        assert status == 401 and json.loads(body)["type"] == "Unauthorized"
        # a reload for the keys kept the split: the others still reach the candidate
        assert [sp.version for sp in gateway.splits()] == ["3.0"]
        assert kind(call("POST", f"/predictions/{NAME}", key, BODY)[2]) == "echo"
    for tenant in ("atk-plain", "atk-limited"):
        gateway.revoke_tenant(tenant)
    # the same rate on both arms: 1 + a burst of 2, then 429 with Retry-After (counted once, not per location)
    assert plain == [(200, "mlp")] * 3 + [(429, "60")] * 2, plain
    assert limited == [(200, "echo")] * 3 + [(429, "60")] * 2, limited


def test_a_streamed_answer_streams_on_every_arm(gateway, client, store, public_key, key):
    for version in ("1.0", "2.0"):
        deploy(client, store, STREAM, version, public_key=public_key)
    ca = Path(gateway.state()["ca_file"])
    try:
        with TorchServe(
            inference_url=gateway.status().url, keys=StaticKeys(inference=key), ca_file=ca, retries=0
        ) as ts:

            def streamed() -> tuple[list[str], float]:
                start, arrivals, chunks = time.monotonic(), [], []
                for chunk in ts.stream(STREAM, {"count": 4, "delay": 0.25}):
                    arrivals.append(time.monotonic() - start)
                    chunks.append(chunk)
                return "".join(chunks).splitlines(), arrivals[-1] - arrivals[0]

            seen = {"plain": streamed()}
            for label, sp in (("canary", Split(STREAM, "2.0", 100, 0)), ("shadow", Split(STREAM, "2.0", 0, 100))):
                with split(gateway, sp):
                    seen[label] = streamed()
    finally:
        unregister_after_load(client, STREAM, version="2.0")
        client.unregister(STREAM)
    for label, (lines, spread) in seen.items():
        assert lines == [f"tick {i}" for i in range(4)], (label, lines)
        assert spread >= 0.6, (label, spread)  # chunk by chunk, not buffered into one answer


def test_one_live_rollout_per_model_and_a_dead_rollouts_split_is_ended_by_the_keeper(gateway):
    gateway.set_split(Split(NAME, "2.0", 10, 0, owner=os.getpid()))
    try:
        with pytest.raises(ConfigError, match="in a live rollout of 2.0 already"):
            gateway.set_split(Split(NAME, "3.0", 10, 0, owner=os.getpid()))
        gateway.set_split(None, model=NAME, version="3.0")  # ending another version's split ends nothing
        assert [sp.version for sp in gateway.splits()] == ["2.0"]
    finally:
        gateway.set_split(None, model=NAME, version="2.0")
    # a rollout killed before it could end its split (SIGKILL): the keeper ends it within a second or two
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gateway.set_split(Split(NAME, "2.0", 10, 0, owner=dead.pid))
    deadline = time.monotonic() + 15
    while gateway.splits() and time.monotonic() < deadline:
        time.sleep(0.2)
    no_split_left(gateway)
