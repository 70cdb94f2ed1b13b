"""`torchship doctor` without a server: each check's decision on inputs the test controls, and that a
row's fix, run as printed, fixes it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from torchship import Project, archiver
from torchship.cli import cli
from torchship.ops import doctor as D
from torchship.ops.deploy import _refuse_shared_writes
from torchship.ops.server import LocalServer, free_port_overrides
from torchship.sdk.config import ServerConfig, write_properties
from torchship.sdk.errors import ArchiveError


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    """Run in a folder of our own: fixes are printed relative to it, and no TORCHSHIP_HOME or TS_* leaks in."""
    monkeypatch.chdir(tmp_path)
    for var in ("TORCHSHIP_HOME", "TS_MANAGEMENT_URL", "TS_INFERENCE_URL"):
        monkeypatch.delenv(var, raising=False)


def run_fix(check: D.Check) -> None:
    """Run a row's fix as a person pastes it into a shell."""
    assert check.fix, check
    subprocess.run(check.fix, shell=True, check=True, capture_output=True)


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    return s


def fake_executable(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- python and packages


def test_python_against_requires_python():
    assert D.check_python((3, 11, 7), ">=3.10").status == "ok"
    old = D.check_python((3, 9, 18), ">=3.10")
    assert old.status == "FAIL" and "3.9.18" in old.found and "3.10" in old.found
    assert "make setup PYTHON=python3.10" in old.fix
    assert D.check_python((3, 8, 0), None).status == "ok"  # nothing to compare with: not a failure


def test_pins_come_from_pyproject_and_match_the_installed_metadata():
    import importlib.metadata

    pins = D._pins()
    assert {"torch", "torchserve", "torch-model-archiver"} <= set(pins)
    installed = D._exact_pins(importlib.metadata.requires("torchship") or [])
    assert pins == installed  # pyproject and the installed metadata agree (else: make setup)
    assert "ruff" not in pins  # pins of an extra (tests) are not the runtime's


def test_exact_pins_ignore_ranges_and_extras():
    reqs = ["torch==2.13.0", "numpy>=1.26", "ruff==0.17.6; extra == 'test'", "tritonclient[http]==2.40", "x == 1.0"]
    assert D._exact_pins(reqs) == {"torch": "2.13.0", "tritonclient": "2.40", "x": "1.0"}


def test_each_pin_is_a_row_that_compares_versions_as_pip_does():
    pins = {"torch": "2.13.0", "torchserve": "0.12.0", "torch-model-archiver": "0.12.0"}
    have = {"torch": "2.13.0+cpu", "torchserve": "0.11.1"}
    rows = {r.check: r for r in D.check_pins(pins, have.get)}
    assert list(rows) == ["torch", "torchserve", "torch-model-archiver"]
    assert rows["torch"].status == "ok" and rows["torch"].fix == ""  # a local label (+cpu) is the same release
    assert rows["torchserve"].status == "FAIL" and "0.11.1" in rows["torchserve"].found
    assert rows["torchserve"].fix.endswith("-m pip install 'torchserve==0.12.0'")
    assert rows["torch-model-archiver"].status == "FAIL" and "not installed" in rows["torch-model-archiver"].found
    assert D._same_version("2.13", "2.13.0") and not D._same_version("2.13.1", "2.13.0")


def test_the_worker_python_needs_numpy_and_ts(tmp_path):
    good = D.check_worker_python(sys.executable)
    assert good.status == "ok" and "numpy" in good.found and "ts 0.12.0" in good.found

    bad = fake_executable(tmp_path / "bin", "python", "echo \"ModuleNotFoundError: No module named 'ts'\" >&2; exit 1")
    row = D.check_worker_python(str(bad))
    assert row.status == "FAIL" and "No module named 'ts'" in row.found
    assert row.fix.endswith("-m pip install 'torchserve==0.12.0'")  # the pinned version, from pyproject

    row = D.check_worker_python(str(tmp_path / "no-such-python"))
    assert row.status == "FAIL" and "does not run" in row.found


def test_the_worker_python_is_the_launchers(tmp_path):
    assert Path(D.worker_python(None)).exists()


# ---------------------------------------------------------------- OS packages


@pytest.mark.parametrize(
    "output, major",
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_292"', 8), ('openjdk version "21"', 21)],
)
def test_java_major(output, major):
    assert D.java_major(output) == major
    assert D.java_major("garbage") is None


def test_java_on_path_is_checked_for_11_or_newer(tmp_path):
    bin_dir = tmp_path / "bin"
    fake_executable(bin_dir, "java", "echo 'openjdk version \"1.8.0_292\"' >&2")
    row = D.check_java({"PATH": str(bin_dir)})
    assert row.status == "FAIL" and "1.8.0_292" in row.found and "11" in row.found and row.fix

    fake_executable(bin_dir, "java", "echo 'openjdk version \"17.0.2\" 2022-01-18' >&2")
    assert D.check_java({"PATH": str(bin_dir)}) == D.Check("java", "ok", f"17.0.2 ({bin_dir / 'java'})")

    empty = tmp_path / "empty"
    empty.mkdir()
    row = D.check_java({"PATH": str(empty)})
    assert row.status == "FAIL" and row.found == "no java in PATH"
    assert "java" in row.fix  # scripts/setup-os.sh java, or the apt-get line where that script is absent


def test_java_home_wins_and_its_fix_is_about_java_home(tmp_path):
    home = tmp_path / "jdk8"
    fake_executable(home / "bin", "java", "echo 'java version \"1.8.0_292\"' >&2")
    fake_executable(tmp_path / "bin", "java", "echo 'openjdk version \"17.0.2\"' >&2")
    row = D.check_java({"JAVA_HOME": str(home), "PATH": str(tmp_path / "bin")})
    assert row.status == "FAIL" and "1.8.0_292" in row.found and "JAVA_HOME" in row.fix


def test_os_package_fix_without_the_setup_script(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "CHECKOUT", tmp_path)  # a checkout without scripts/setup-os.sh
    apt = fake_executable(tmp_path / "bin", "apt-get", "exit 0")
    fix = D._os_fix("wrk", "wrk", {"PATH": str(apt.parent)})
    assert fix.endswith("apt-get install -y wrk")
    assert ("sudo " in fix) == (os.geteuid() != 0)
    assert "package manager" in D._os_fix("wrk", "wrk", {"PATH": str(tmp_path / "nothing")})


def test_wrk_is_a_warning_only():
    assert D.check_wrk("/usr/bin/wrk").status == "ok"
    row = D.check_wrk(None)
    assert row.status == "warn" and "wrk" in row.fix


# ---------------------------------------------------------------- config and ports


def test_a_free_port_passes():
    s = listening_socket()
    port = s.getsockname()[1]
    s.close()
    assert D.check_port("inference", "127.0.0.1", port, set()) == D.Check(
        "port inference", "ok", f"127.0.0.1:{port} free"
    )


def test_a_port_held_by_another_process_fails_and_names_the_config_key(tmp_path):
    config = tmp_path / "config.properties"
    write_properties(config, free_port_overrides())
    cfg = ServerConfig.load(config)
    with listening_socket() as held:
        port = held.getsockname()[1]
        row = D.check_port("management", "127.0.0.1", port, set(), cfg)
        assert row.status == "FAIL" and f"127.0.0.1:{port} held by pid {os.getpid()}" in row.found
        assert row.fix.startswith("set management_address=http://127.0.0.1:") and "config.properties" in row.fix
        new_port = int(row.fix.split("=http://127.0.0.1:")[1].split()[0])
        assert new_port != port

        grpc = D.check_port("grpc_inference", "127.0.0.1", port, set(), cfg)
        assert grpc.status == "FAIL" and grpc.fix.startswith("set grpc_inference_port=")

        # held by the project's own server (its pids): that is how it should be
        ours = D.check_port("management", "127.0.0.1", port, {os.getpid()}, cfg)
        assert ours.status == "ok" and f"held by this project's server (pid {os.getpid()})" in ours.found


def test_every_listener_of_the_config_is_a_row(tmp_path):
    props = free_port_overrides()
    with listening_socket() as held:
        props["metrics_address"] = f"http://127.0.0.1:{held.getsockname()[1]}"
        config = tmp_path / "config.properties"
        write_properties(config, props)
        rows = {r.check: r.status for r in D.check_ports(ServerConfig.load(config), set())}
    assert rows == {
        "port inference": "ok",
        "port management": "ok",
        "port metrics": "FAIL",
        "port grpc_inference": "ok",
        "port grpc_management": "ok",
    }


def test_a_missing_config_fails_with_the_copy_that_restores_it(tmp_path):
    row = D.check_config(tmp_path / "config.properties")
    assert row.status == "FAIL" and "not found" in row.found
    run_fix(row)
    assert D.check_config(tmp_path / "config.properties").status == "ok"


# ---------------------------------------------------------------- the server


def local_server(tmp_path: Path) -> LocalServer:
    config = tmp_path / "config.properties"
    write_properties(config, free_port_overrides())
    return LocalServer(config, tmp_path / "server")


def test_a_server_that_does_not_run_fails_with_serve_start(tmp_path):
    server = local_server(tmp_path)
    row = D.check_server(server, None)
    assert row.status == "FAIL" and row.found.startswith("not running") and row.fix == "torchship serve start"
    assert D.check_server(server, None, "torchship --config c.properties").fix == (
        "torchship --config c.properties serve start"
    )
    assert D.check_server_key_file(server, None).status == "skip"


def test_the_server_key_file_must_be_0600(tmp_path):
    server = local_server(tmp_path)
    server.workdir.mkdir()
    pid = os.getpid()  # any running pid: the check reads only the file's mode
    assert D.check_server_key_file(server, pid).status == "FAIL"  # running without its key file
    server.key_file.write_text('{"API": {"key": "secret-value"}}')
    server.key_file.chmod(0o644)
    row = D.check_server_key_file(server, pid)
    assert row.status == "FAIL" and "0644" in row.found and row.fix == "chmod 600 server/key_file.json"
    assert "secret-value" not in str(row)  # never key material
    run_fix(row)
    assert D.check_server_key_file(server, pid).status == "ok"


def test_the_server_of_an_effective_config_is_the_one_in_its_folder(tmp_path):
    workdir = tmp_path / "srv"
    workdir.mkdir()
    write_properties(workdir / "config.properties", free_port_overrides())
    (workdir / "key_file.json").write_text("{}")
    project = Project.find(config=workdir / "config.properties")
    assert D.server_of(project).workdir == workdir
    assert D.torchship_command(project) == "torchship --config srv/config.properties"

    write_properties(tmp_path / "config.properties", free_port_overrides())
    plain = Project(tmp_path)
    assert D.server_of(plain).workdir == tmp_path / ".torchship" / "server"
    assert D.torchship_command(plain) == "torchship"


# ---------------------------------------------------------------- keys, store, disk


def test_the_signing_key_missing_is_a_warning_whose_fix_makes_it(tmp_path):
    key_dir = tmp_path / ".torchship" / "keys"
    row = D.check_signing_key(key_dir)
    assert row.status == "warn" and "none yet" in row.found
    assert D.check_key_folder(key_dir).status == "skip"
    run_fix(row)
    assert D.check_signing_key(key_dir).status == "ok"
    assert D.check_key_folder(key_dir) == D.Check("key folder", "ok", ".torchship/keys 0700")


def test_a_signing_key_others_can_read_fails_with_chmod(tmp_path):
    private, _ = archiver.ensure_keys(tmp_path / "keys")
    assert D.check_signing_key(tmp_path / "keys").status == "ok"
    for mode in (0o640, 0o604, 0o660):
        private.chmod(mode)
        row = D.check_signing_key(tmp_path / "keys")
        assert row.status == "FAIL" and f"{mode:04o}" in row.found and row.fix == "chmod 600 keys/signing-key.pem"
        assert "PRIVATE KEY" not in str(row)
    run_fix(row)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and D.check_signing_key(tmp_path / "keys").status == "ok"


def test_a_key_folder_others_can_write_fails(tmp_path):
    archiver.ensure_keys(tmp_path / "keys")
    for mode in (0o777, 0o720, 0o702):
        (tmp_path / "keys").chmod(mode)
        row = D.check_key_folder(tmp_path / "keys")
        assert row.status == "FAIL" and row.fix == "chmod 700 keys", mode
    run_fix(row)
    assert D.check_key_folder(tmp_path / "keys").status == "ok"
    (tmp_path / "keys").chmod(0o755)  # readable is fine: the private key itself is 0600
    assert D.check_key_folder(tmp_path / "keys").status == "ok"


def test_a_shared_writable_store_or_archive_fails_as_deploy_refuses_it(tmp_path):
    store = tmp_path / "model_store"
    assert D.check_store(store).status == "ok"  # not made yet
    store.mkdir()
    archive = store / "mlp-1.0.mar"
    archive.write_bytes(b"PK")
    assert D.check_store(store) == D.Check("model store", "ok", "model_store 0755, 1 archive(s)")
    for store_mode, archive_mode in ((0o777, 0o644), (0o755, 0o666), (0o1777, 0o644), (0o775, 0o664)):
        store.chmod(store_mode)
        archive.chmod(archive_mode)
        row = D.check_store(store)
        try:
            _refuse_shared_writes(archive)
            refused = False
        except ArchiveError:
            refused = True
        assert (row.status == "FAIL") == refused, (oct(store_mode), oct(archive_mode))
        if refused:
            assert row.fix.startswith("chmod o-w ")
            run_fix(row)
            assert D.check_store(store).status == "ok"


def test_disk_space_under_the_minimum_fails_and_shows_the_figure(tmp_path):
    ok = D.check_disk(tmp_path / "model_store" / "not" / "yet")  # looks at the nearest folder that exists
    assert ok.status == "ok" and ok.found.endswith(f"iB free at {tmp_path}")
    row = D.check_disk(tmp_path, minimum=1 << 60)
    assert row.status == "FAIL" and "free at" in row.found and "under 1073741824.0 GiB" in row.found
    assert D._size(1536 * 1024 * 1024) == "1.5 GiB" and D._size(512) == "512 B"


# ---------------------------------------------------------------- data


def fake_fetch(tmp_path: Path) -> SimpleNamespace:
    """fetch_data's shape, with tables of our own, and its real `present` and `sha256`."""
    real = D._fetch_data()
    assert real is not None
    files = {"a": b"sentiment bytes", "b": b"fashion bytes"}
    digest = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    (tmp_path / "debian").mkdir()
    return SimpleNamespace(
        DATA=tmp_path / "data",
        WHEELS={"sentiment": ("x==1", "x.whl", {"pkg/data/a.csv": digest["a"]})},
        FASHION={"b.gz": digest["b"]},
        FASHION_DEBIAN=tmp_path / "debian",
        SCHEMAS=("k==1", "k.whl", digest["a"]),
        present=real.present,
        sha256=real.sha256,
        payload=files,
    )


def test_missing_or_changed_data_fails_with_make_data(tmp_path):
    fetch = fake_fetch(tmp_path)
    rows = {r.check: r for r in D.check_data(fetch)}
    assert list(rows) == ["data sentiment", "data fashion", "data schemas"]
    assert rows["data sentiment"].status == "FAIL" and "missing or changed" in rows["data sentiment"].found
    assert "make" in rows["data sentiment"].fix and rows["data sentiment"].fix.endswith(" data")
    assert rows["data schemas"].status == "warn"  # only the tests use it

    (fetch.DATA / "sentiment").mkdir(parents=True)
    (fetch.DATA / "sentiment" / "a.csv").write_bytes(fetch.payload["a"])
    (fetch.DATA / "fashion").mkdir()
    (fetch.DATA / "fashion" / "b.gz").write_bytes(b"changed")
    rows = {r.check: r for r in D.check_data(fetch)}
    assert rows["data sentiment"].status == "ok" and "sha256 checked" in rows["data sentiment"].found
    assert rows["data fashion"].status == "FAIL"


def test_data_outside_a_checkout_is_skipped():
    assert [r.status for r in D.check_data(None)] == ["skip"]


def test_the_real_tables_make_one_row_per_data_set():
    rows = D.check_data(D._fetch_data())
    assert [r.check for r in rows] == [
        "data sentiment",
        "data fashion",
        "data recommender",
        "data embedder",
        "data schemas",
    ]


# ---------------------------------------------------------------- the whole report


def expected_rows(pins: dict[str, str]) -> list[str]:
    ports = [f"port {n}" for n in D.PORT_KEYS]
    head = ["python", "java", *pins, "worker python", "wrk", "config", *ports, "server", "server key file"]
    tail = ["model store", "disk", "key folder", "signing key", "model keys"]
    data = ["data sentiment", "data fashion", "data recommender", "data embedder", "data schemas"]
    return head + tail + data


def test_diagnose_a_fresh_project_is_quick_and_says_what_is_missing(tmp_path):
    write_properties(tmp_path / "config.properties", {**free_port_overrides(), "model_store": "model_store"})
    started = time.monotonic()
    report = Project(tmp_path).doctor()
    assert time.monotonic() - started < 3
    rows = {r.check: r for r in report.checks}
    assert list(rows) == expected_rows(D._pins())
    assert rows["server"].status == "FAIL" and rows["server"].fix == "torchship serve start"
    assert rows["signing key"].status == "warn" and rows["server key file"].status == "skip"
    assert all(rows[f"port {n}"].status == "ok" for n in D.PORT_KEYS)
    assert not report.ok and report.failures
    assert all(r.fix for r in report.checks if r.status == "FAIL")
    assert all(not r.fix for r in report.checks if r.status == "ok")
    json.dumps(report.to_dict())


def test_a_check_that_raises_or_hangs_is_a_fail_row_not_a_crash(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk exploded\nsecond line")

    def hang(*args, **kwargs):
        time.sleep(3)
        return []

    monkeypatch.setattr(D, "check_disk", boom)
    monkeypatch.setattr(D, "check_data", hang)
    report = D.diagnose(Project(tmp_path), timeout=1)
    rows = {r.check: r for r in report.checks}
    assert rows["disk"] == D.Check("disk", "FAIL", "the check failed: disk exploded", "")
    assert rows["data"].status == "FAIL" and "did not finish within 1 s" in rows["data"].found
    assert rows["config"].status == "FAIL" and rows["ports"].status == "skip"  # no config here
    assert rows["java"].status in ("ok", "FAIL")  # the others still ran


def test_the_command_prints_the_table_and_exits_1_on_a_failure(tmp_path):
    write_properties(tmp_path / "config.properties", free_port_overrides())
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["check", "status", "found", "fix"]
    assert any(line.startswith("server") and "FAIL" in line and "torchship serve start" in line for line in lines)
    assert "checks FAIL" in lines[-1] and "warn" not in lines[0]

    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["ok"] is False and {c["check"] for c in out["checks"]} >= {"java", "server", "port inference"}
    assert all(set(c) == {"check", "status", "found", "fix"} for c in out["checks"])
    assert next(c for c in out["checks"] if c["check"] == "python")["fix"] is None


def test_the_report_passes_only_without_a_fail_row():
    rows = [D.Check("a", "ok", "x"), D.Check("b", "warn", "y", "do"), D.Check("c", "skip", "z")]
    report = D.DoctorReport(rows, 0.25)
    assert report.ok and "all 3 checks passed; 1 warning(s)" in report.summary()
    failed = D.DoctorReport([*rows, D.Check("d", "FAIL", "w", "fix it")], 0.25)
    assert not failed.ok and failed.failures == [D.Check("d", "FAIL", "w", "fix it")]
    assert failed.summary().startswith("1 of 4 checks FAIL")


def test_the_model_keyring_must_be_private_when_there_is_one(tmp_path):
    from torchship.ops.doctor import check_model_keys

    assert check_model_keys(tmp_path).status == "skip"
    keyring = tmp_path / "model-keys.json"
    keyring.write_text("{}")
    keyring.chmod(0o644)
    row = check_model_keys(tmp_path)
    assert row.status == "FAIL" and row.fix.startswith("chmod 600 ") and row.fix.endswith("model-keys.json")
    keyring.chmod(0o600)
    assert check_model_keys(tmp_path).status == "ok"
