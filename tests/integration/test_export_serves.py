"""The exported layout serves the way the hardened pod runs it: a real TorchServe started from the
exported manifest's own container (its args, env and workingDir), with each volume of the pod
stood in for by a local folder: the config and the archives read-only (chmod a-w, and checked
unchanged afterwards, since root ignores the mode), the two emptyDirs as separate fresh folders,
and, for encrypted archives, the Secret's volume as the kubelet would fill it (its items, from the
exported Secret, at their mode). It loads every model with the declared state, and writes only
into the emptyDir stand-ins; an encrypted archive answers as the plain one does, with the key the
manifest mounts and names, and no plaintext weights anywhere TorchServe writes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_same_answers, rows
from tests.strategies import GOOD
from torchship import TorchServe, archiver
from torchship.archiver.model_keys import rotate_keyring
from torchship.handlers import torchship_crypto
from torchship.ops.desired import parse_desired
from torchship.ops.export import export
from torchship.ops.server import _FORBIDDEN_ENV, _torchserve_executable, free_port_overrides
from torchship.sdk.config import java_regex_literal
from torchship.sdk.errors import TorchServeError

pytestmark = pytest.mark.integration
MODEL_KEYS_ENV = torchship_crypto.KEYRING_ENV


def _secret_volume(volume: dict, out: Path, target: str) -> Path:
    """What the kubelet puts in a Secret's volume: each item of the exported Secret, decoded, at
    its path with the volume's defaultMode (a folder beside the export, made read-only)."""
    secret = yaml.safe_load((out / target / "secret.yaml").read_text())
    assert secret["metadata"]["name"] == volume["secret"]["secretName"]
    folder = out.parent / "secret" / volume["name"]
    folder.mkdir(parents=True)
    for item in volume["secret"]["items"]:
        path = folder / item["path"]
        path.write_bytes(base64.b64decode(secret["data"][item["key"]]))
        path.chmod(volume["secret"]["defaultMode"])
    return folder


def _pod(target: str, out: Path) -> tuple[dict, dict[str, Path]]:
    """The TorchServe container of the exported manifests, and each of its mount paths mapped to
    the local folder that stands in for the volume."""
    layout = out / "model-store"
    if target == "k8s":
        deployment = yaml.safe_load((out / "k8s" / "deployment.yaml").read_text())
        pod = deployment["spec"]["template"]["spec"]
        configmap = yaml.safe_load((out / "k8s" / "configmap.yaml").read_text())
        assert configmap["data"]["config.properties"] == (layout / "config" / "config.properties").read_text()
        sources = {"config": layout / "config", "model-store": layout / "model-store"}
    else:
        runtime = yaml.safe_load((out / "kserve" / "servingruntime.yaml").read_text())["spec"]
        pod = {"containers": runtime["containers"], "volumes": runtime["volumes"]}
        pod["containers"][0]["volumeMounts"].append({"name": "storage", "mountPath": "/mnt/models", "readOnly": True})
        sources = {"storage": layout}  # what KServe's storage initializer puts at /mnt/models
    container = pod["containers"][0]
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    sources |= {v["name"]: _secret_volume(v, out, target) for v in pod["volumes"] if "secret" in v}
    mounts = {}
    for m in container["volumeMounts"]:
        if m["name"] in empty:
            assert not m.get("readOnly")
            mounts[m["mountPath"]] = out.parent / "emptydir" / m["name"]
            mounts[m["mountPath"]].mkdir(parents=True)
        else:
            assert m.get("readOnly") is True, m
            mounts[m["mountPath"]] = sources[m["name"]]
    return container, mounts


def _local(value: str, mounts: dict[str, Path]) -> str:
    """A path inside the pod as its local stand-in (values that are not under a mount unchanged)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")) :]
        if "=" in value and value.split("=", 1)[1].startswith(mount.rstrip("/") + "/"):  # --flag=/path
            flag, path = value.split("=", 1)
            return f"{flag}={_local(path, mounts)}"
    return value


def _localise_config(path: Path, mounts: dict[str, Path], ports: dict[str, str]) -> None:
    """The cluster's network (pod IP, fixed ports) as free loopback ports, and the pod's paths as
    their stand-ins; every other line as exported."""
    lines = []
    for line in path.read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in ports:
            continue
        if key == "model_store":
            line = f"model_store={_local(line.split('=', 1)[1], mounts)}"
        elif key == "allowed_urls":
            store = _local(
                next(v.split("=", 1)[1] for v in path.read_text().splitlines() if v.startswith("model_store=")), mounts
            )
            line = "allowed_urls=file://" + java_regex_literal(store + "/") + "[^/]+\\.mar"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in ports.items()]
    path.write_text("\n".join(lines) + "\n")


def _tree(root: Path) -> dict[str, tuple[int, int, float]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime)
        for p in [root, *root.rglob("*")]
    }


def _set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the session this test started (launcher, frontend, workers), as the kubelet
    would; SIGKILL to what is left after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            proc.poll()
            os.killpg(proc.pid, 0)  # ProcessLookupError once every process of the group is gone
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pod_store(tmp_path_factory, mlp_archive, sentiment_run, key_dir, public_key) -> Path:
    """mlp-1.0 and sentiment-1.0, signed: only the two models this test serves."""
    here = tmp_path_factory.mktemp("pod_store")
    for f in (mlp_archive, archiver.signature_path(mlp_archive)):
        (here / f.name).write_bytes(f.read_bytes())
    archiver.package(archiver.example_spec("sentiment", sentiment_run, "1.0"), here, key_dir)
    return here


@contextlib.contextmanager
def _serving(target: str, out: Path, log_dir: Path):
    """TorchServe run as the exported pod's container (see the module's docstring), healthy; yields
    (client, its environment); afterwards stopped, and every read-only volume checked unchanged."""
    container, mounts = _pod(target, out)
    ports = free_port_overrides()
    _localise_config(out / "model-store" / "config" / "config.properties", mounts, ports)
    read_only = [out / "model-store", *sorted((out.parent / "secret").glob("*"))]
    for folder in read_only:
        _set_writable(folder, False)
    before = [_tree(folder) for folder in read_only]

    env = {k: v for k, v in os.environ.items() if k not in _FORBIDDEN_ENV and k != MODEL_KEYS_ENV}
    env.update({e["name"]: _local(e["value"], mounts) for e in container["env"]})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    assert container["args"][0] == "torchserve"
    cmd = [_torchserve_executable()] + [_local(a, mounts) for a in container["args"][1:]]
    workdir = Path(_local(container["workingDir"], mounts))
    tmpdir = Path(env["TMPDIR"])
    assert workdir.is_dir() and tmpdir.is_dir() and workdir != tmpdir
    assert env["TEMP"] == env["TMPDIR"]

    console = log_dir / "console.log"
    with open(console, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    client = TorchServe(
        ports["management_address"], ports["inference_address"], ports["metrics_address"], None, retries=0, timeout=10
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "TorchServe exited:\n" + console.read_text(errors="replace")[-3000:]
            try:
                if client.ping() == "Healthy":
                    break
            except TorchServeError:
                pass
            assert time.monotonic() < deadline, console.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        yield client, env
        assert not (out / "model-store" / "logs").exists()
    finally:
        client.close()
        _stop(proc)
        after = [_tree(folder) for folder in read_only]
        for folder in read_only:
            _set_writable(folder, True)
    assert after == before, "TorchServe wrote into a read-only volume"


@pytest.mark.parametrize("target", ["kserve", "k8s"])
def test_exported_pod_loads_the_declared_state_with_only_its_empty_dirs_writable(
    tmp_path, pod_store, public_key, target
):
    desired = parse_desired(
        {
            "models": {
                "mlp": {"versions": ["1.0"], "batch_size": 8, "max_batch_delay_ms": 10},
                "sentiment": {
                    "versions": ["1.0"],
                    "batch_size": 4,
                    "max_batch_delay_ms": 5,
                    "workers": {"min": 1, "max": 2},
                },
            }
        }
    )
    out = tmp_path / "out"
    export(target, desired, pod_store, out, public_key=public_key)
    with _serving(target, out, tmp_path) as (client, env):
        for name, want in desired.models.items():
            d = client.wait_until_ready(name, timeout=90)
            assert (d.version, d.is_default, d.batch_size, d.max_batch_delay, d.min_workers, d.max_workers) == (
                "1.0",
                True,
                want.batch_size,
                want.max_batch_delay_ms,
                want.min_workers,
                want.max_workers,
            )
            assert client.predict(name, json.loads(GOOD[name]))

        # what TorchServe wrote, each where the manifest said: the pid file in TMPDIR; java.io.tmpdir
        # (from TEMP): the workers' sockets and the unpacked archives; logs under LOG_LOCATION.
        tmpdir = Path(env["TMPDIR"])
        assert (tmpdir / ".model_server.pid").is_file()
        assert any(stat.S_ISSOCK(p.stat().st_mode) for p in tmpdir.glob(".ts.sock.*"))
        assert any((d / "MAR-INF" / "MANIFEST.json").is_file() for d in (tmpdir / "models").iterdir())
        assert (Path(env["LOG_LOCATION"]) / "ts_log.log").is_file()
        assert MODEL_KEYS_ENV not in env  # no encrypted archive: no key in the pod


@pytest.fixture(scope="module")
def sealed_store(tmp_path_factory, mlp_run, key_dir, public_key) -> tuple[Path, Path]:
    """mlp-1.0 plain and mlp-2.0 the same checkpoint encrypted (as `torchship package --encrypt`
    builds it), both signed; and the project's keyring, which also holds a key they do not use."""
    here, keys = tmp_path_factory.mktemp("sealed_store"), tmp_path_factory.mktemp("model_keys")
    archiver.package(archiver.example_spec("mlp", mlp_run, "1.0"), here, key_dir)
    keyring, _ = archiver.ensure_keyring(keys)
    archiver.package(
        archiver.example_spec("mlp", mlp_run, "2.0"), here, key_dir, model_key=archiver.load_keyring(keyring)
    )
    rotate_keyring(keyring)  # the current key is now one that mlp-2.0 is not wrapped under
    return here, keyring


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_exported_pod_serves_an_encrypted_archive_with_the_key_its_secret_mounts(
    tmp_path, sealed_store, public_key, target
):
    store, keyring = sealed_store
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0", "2.0"], "default": "1.0"}}})
    out = tmp_path / "out"
    export(target, desired, store, out, public_key=public_key, model_keys=keyring)
    bodies = [{"data": row} for row in rows(4, seed=3)]
    secret = yaml.safe_load((out / target / "secret.yaml").read_text())
    pod_keyring = base64.b64decode(secret["data"]["model-keys.json"])
    with _serving(target, out, tmp_path) as (client, env):
        keys_file = Path(env[MODEL_KEYS_ENV])  # the manifest's path, as its mount's stand-in
        assert keys_file.read_bytes() == pod_keyring and stat.S_IMODE(keys_file.stat().st_mode) == 0o400
        for version in ("1.0", "2.0"):
            assert client.wait_until_ready("mlp", version, timeout=90).version == version
        plain = [client.predict("mlp", b, version="1.0") for b in bodies]
        assert_same_answers([client.predict("mlp", b, version="2.0") for b in bodies], plain)
        # the encrypted archive unpacked: its ciphertext, no plaintext weights beside it
        unpacked = [d for d in (Path(env["TMPDIR"]) / "models").iterdir() if (d / "model.safetensors.tsenc").is_file()]
        assert len(unpacked) == 1 and not list(unpacked[0].rglob("*.safetensors"))
        # and no key material in anything TorchServe wrote (logs, working folder, TMPDIR)
        _, keys = torchship_crypto.read_keyring(keys_file)
        assert len(keys) == 1  # the key mlp-2.0 is wrapped under, not the keyring's newer current one
        needles = [pod_keyring] + [k for key in keys.values() for k in (key, base64.b64encode(key))]
        for folder in (Path(env["TMPDIR"]), Path(env["HOME"]), Path(env["LOG_LOCATION"])):
            for f in folder.rglob("*"):
                if f.is_file():
                    data = f.read_bytes()
                    assert not any(n in data for n in needles), f
