import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from torchship import archiver
from torchship.archiver import ArchiveSpec, example_spec, validate_model_config
from torchship.sdk.errors import ArchiveError


def test_example_archive_holds_what_the_worker_needs(mlp_run, tmp_path):
    path = archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path).path
    assert path == tmp_path / "mlp-1.0.mar"
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    assert {
        "mlp_handler.py",
        "torchship_base_handler.py",
        "torchship_models.py",
        "model.safetensors",
        "meta.json",
        "model-config.yaml",
    } <= names
    assert manifest["model"]["modelName"] == "mlp" and manifest["model"]["modelVersion"] == "1.0"
    assert manifest["model"]["serializedFile"] == "model.safetensors"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_existing_archive_is_never_overwritten_without_force(mlp_run, tmp_path):
    path = archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path).path
    before = path.read_bytes()
    with pytest.raises(ArchiveError, match="--force"):
        archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path)
    assert path.read_bytes() == before
    archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path, force=True)
    assert path.exists()


def test_each_handler_imports_on_its_own_from_the_archive(mlp_run, tmp_path):
    """In a worker, an ImportError in a handler surfaces as a misleading message: check here."""
    path = archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path / "store").path
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(path).extractall(unpacked)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path.insert(0, '.'); import mlp_handler; "
            "from ts.utils.util import list_classes_from_module as l; print(len(l(mlp_handler)))",
        ],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"  # TorchServe needs exactly one class in the handler module


@pytest.mark.parametrize(
    "config, message",
    [
        ({"batchSize": "8"}, "batchSize must be int"),
        ({"minWorkers": True}, "minWorkers must be int"),
        ({"maxBatchDelay": -1}, "maxBatchDelay must be >= 0"),
        ({"minWorkers": 3, "maxWorkers": 1}, "above maxWorkers"),
        ({"deviceType": "tpu"}, "deviceType must be one of"),
        ({"handler": []}, "handler must be dict"),
    ],
)
def test_model_config_types_are_validated(config, message):
    with pytest.raises(ArchiveError, match=message):
        validate_model_config(config)


def test_valid_model_config_and_unknown_keys_pass():
    cfg = {"minWorkers": 1, "maxWorkers": 2, "batchSize": 4, "handler": {"threads": 1}, "myOwnKey": "x"}
    assert validate_model_config(cfg) is cfg


def test_bad_model_config_builds_nothing(mlp_run, tmp_path):
    spec = example_spec("mlp", mlp_run, "1.0")
    bad = ArchiveSpec(
        spec.name,
        spec.version,
        spec.handler,
        spec.weights,
        extra_files=spec.extra_files,
        model_config={"batchSize": "eight"},
    )
    with pytest.raises(ArchiveError):
        archiver.build(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, version, message",
    [
        ("../evil", "1.0", "invalid model name"),
        ("mlp", "../1", "invalid version"),
        ("", "1.0", "invalid model name"),
        ("mlp", "1 0", "invalid version"),
    ],
)
def test_names_and_versions_are_validated(mlp_run, name, version, message):
    with pytest.raises(ArchiveError, match=message):
        ArchiveSpec(name, version, mlp_run / "meta.json", mlp_run / "model.safetensors")


def test_missing_files_and_incomplete_checkpoints_are_refused(mlp_run, tmp_path):
    with pytest.raises(ArchiveError, match="weights not found"):
        ArchiveSpec("m", "1.0", mlp_run / "meta.json", tmp_path / "nope.safetensors")
    with pytest.raises(ArchiveError, match="not a complete checkpoint"):
        example_spec("mlp", tmp_path, "1.0")
    with pytest.raises(ArchiveError, match="no example model"):
        example_spec("nope", mlp_run, "1.0")


def test_unwritable_store_is_a_clear_error_and_leaves_nothing(mlp_run, tmp_path):
    if os.geteuid() == 0:
        store = Path("/proc/torchship-store")  # not writable even for root
    else:
        store = tmp_path / "ro"
        store.mkdir()
        store.chmod(0o500)
    with pytest.raises(ArchiveError, match="cannot write to the model store"):
        archiver.build(example_spec("mlp", mlp_run, "1.0"), store)


def test_disk_full_while_packaging_leaves_no_partial_archive(mlp_run, tmp_path):
    """The file-size limit stands in for a full disk: the write fails half-way."""
    import textwrap

    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        from torchship import archiver
        from torchship.sdk.errors import ArchiveError
        try:
            archiver.build(archiver.example_spec("mlp", {str(mlp_run)!r}, "1.0"), {str(tmp_path / "store")!r})
        except ArchiveError as exc:
            print("ArchiveError:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ArchiveError: packaging mlp-1.0.mar failed: File too large; nothing was written" in out.stdout, out.stderr
    assert list((tmp_path / "store").iterdir()) == []
