"""Every byte TorchServe unpacks is verified: attacks on the zip layout against a real server.

TorchServe 0.12 unpacks archives with a streaming reader that walks local headers front to back;
a central-directory reader (Python's zipfile) can be shown another archive in the same file. The
first test proves that the gap is real on this server; the others, that verify and deploy close it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import zipcraft
from torchship import archiver
from torchship import errors as E
from torchship.archiver import ArchiveSpec, example_spec
from torchship.ops.deploy import deploy

pytestmark = pytest.mark.integration
TORCHSHIP = str(Path(sys.executable).parent / "torchship")


def hidden_handler(marker: Path) -> bytes:
    return f"open({str(marker)!r}, 'w').write('the hidden handler ran')\n".encode()


def signed_archive(mlp_run, store, key_dir, version: str) -> Path:
    spec = example_spec("mlp", mlp_run, version)
    spec = ArchiveSpec(
        "layout", version, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
    )
    return archiver.package(spec, store, key_dir, force=True).path


def test_the_attack_is_real_a_hidden_entry_runs_in_the_worker_when_unchecked(client, store, key_dir, mlp_run, tmp_path):
    """Registered without torchship's check, the hidden handler (invisible to zipfile) is the one
    TorchServe extracts and imports. This is what the layout check exists to stop."""
    marker = tmp_path / "ran"
    path = signed_archive(mlp_run, store, key_dir, "0.1")
    zipcraft.hide_entry(path, "mlp_handler.py", hidden_handler(marker))
    try:
        client.register(path.name, model_name="layout", initial_workers=1, synchronous=True, timeout=60)
    except E.TorchServeError:
        pass  # the hidden file is no handler: the worker fails after running its import-time code
    finally:
        try:
            client.unregister("layout", "0.1")
        except E.TorchServeError:
            pass
    assert marker.read_text() == "the hidden handler ran"


@pytest.mark.parametrize(
    "version, attack, check",
    [
        ("1.1", lambda p, m: zipcraft.hide_entry(p, "mlp_handler.py", hidden_handler(m)), "layout"),
        ("1.2", lambda p, m: zipcraft.hide_entry(p, "big.bin", b"\0" * (100 << 20), deflate=True), "layout"),
        ("1.3", lambda p, m: zipcraft.prepend(p, b"\0" * 512, fix_offsets=True), "layout"),
        ("1.4", lambda p, m: zipcraft.rename_local(p, "meta.json", "evil.py__"), "layout"),
        ("1.5", lambda p, m: zipcraft.duplicate_member(p, "mlp_handler.py", hidden_handler(m)), "layout"),
        (
            "1.6",
            lambda p, m: zipcraft.stuff_after_deflate_end(
                p, "meta.json", zipcraft.local_entry("mlp_handler.py", hidden_handler(m))
            ),
            "contents",
        ),
    ],
    ids=[
        "hidden entry",
        "hidden large entry",
        "data prepended",
        "local/central name mismatch",
        "duplicate local names",
        "bytes after a deflate stream",
    ],
)
def test_layout_attacks_are_refused_by_verify_and_by_deploy(
    version, attack, check, server, client, store, key_dir, public_key, mlp_run, tmp_path, mlp_deployed
):
    marker = tmp_path / "ran"
    path = signed_archive(mlp_run, store, key_dir, version)
    attack(path, marker)
    archiver.sign(path, key_dir)  # even re-signed by an insider with the key: the layout still refuses it

    verified = subprocess.run(
        [
            TORCHSHIP,
            "--config",
            str(server.effective_config_path),
            "verify",
            str(path),
            "--public-key",
            str(public_key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 8, verified.stdout + verified.stderr
    assert f"({check})" in verified.stderr and verified.stderr.count("\n") == 1

    with pytest.raises(E.VerificationError, match=rf"failed verification \({check}\)"):
        deploy(client, store, "layout", version, public_key=public_key)
    with pytest.raises(E.ModelNotFound):
        client.describe("layout")
    assert not marker.exists()
    assert client.ping() == "Healthy"
    assert client.predict("mlp", {"data": [0.0] * 100})["class_id"] in range(10)


def test_apply_rollout_and_export_go_through_the_same_check(
    client, store, key_dir, public_key, mlp_run, tmp_path, mlp_deployed
):
    from torchship.ops.desired import apply, parse_desired
    from torchship.ops.export import export
    from torchship.ops.rollout import GoldenItem, rollout

    marker = tmp_path / "ran"
    path = signed_archive(mlp_run, store, key_dir, "2.1")
    zipcraft.hide_entry(path, "mlp_handler.py", hidden_handler(marker))
    desired = parse_desired({"models": {"layout": {"versions": ["2.1"], "default": "2.1"}}})

    report = apply(client, store, desired, public_key=public_key)
    assert not report.ok and "failed verification (layout)" in report.error

    golden = [GoldenItem({"data": [0.0] * 100}, {"class_id": 0})]
    rolled = rollout(client, store, "layout", "2.1", golden=golden, public_key=public_key)
    assert not rolled.passed and rolled.gate == "deploy" and "(layout)" in rolled.reason

    with pytest.raises(E.VerificationError, match=r"\(layout\)"):
        export("k8s", desired, store, tmp_path / "out", public_key=public_key)
    assert not list((tmp_path / "out").rglob("*.mar"))

    with pytest.raises(E.ModelNotFound):
        client.describe("layout")
    assert not marker.exists() and client.ping() == "Healthy"


class _WritesDuringRegister:
    """A client through which the archive is rewritten between verification and registration, as a
    second writer to the model store would."""

    def __init__(self, client, path: Path) -> None:
        self._client, self._path = client, path

    def __getattr__(self, name):
        return getattr(self._client, name)

    def register(self, *args, **kwargs):
        self._path.write_bytes(self._path.read_bytes())  # same bytes, but written: it is another file now
        return self._client.register(*args, **kwargs)


def test_an_archive_written_between_verification_and_loading_is_removed_again(
    client, store, key_dir, public_key, mlp_run
):
    path = signed_archive(mlp_run, store, key_dir, "3.1")
    with pytest.raises(E.VerificationError, match="changed while it was being verified and registered"):
        deploy(_WritesDuringRegister(client, path), store, "layout", "3.1", public_key=public_key)
    with pytest.raises(E.ModelNotFound):
        client.describe("layout")


def test_an_archive_every_account_may_write_is_refused(client, store, key_dir, public_key, mlp_run):
    path = signed_archive(mlp_run, store, key_dir, "3.2")
    path.chmod(0o666)
    try:
        with pytest.raises(E.ArchiveError, match="writable by every account"):
            deploy(client, store, "layout", "3.2", public_key=public_key)
    finally:
        path.chmod(0o644)
    with pytest.raises(E.ModelNotFound):
        client.describe("layout")
