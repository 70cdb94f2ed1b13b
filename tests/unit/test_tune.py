"""tune's threads step without a server: which splits of the cores it tries, and the trial copy of
an archive whose handler then really runs that many torch threads."""

import json
import sys
import zipfile

import pytest
import torch
import yaml

from torchship import archiver
from torchship.archiver import example_spec
from torchship.perf.tune import packaged_threads, thread_splits, threads_copy

from .handler_context import make_context


@pytest.mark.parametrize(
    "best_workers, cores, packaged, splits",
    [
        (1, 2, 1, [(1, 2)]),  # two cores: one worker with both
        (2, 2, 1, [(1, 2)]),  # never 2 workers x 2 threads on 2 cores
        (2, 16, 1, [(1, 2), (1, 16), (2, 2), (2, 8)]),  # bounded: not every power of two
        (1, 1, 1, []),  # one core: nothing to try
        (1, 2, 2, []),  # packaged with 2 already: tried in steps 1-3
    ],
)
def test_thread_splits_never_oversubscribe(best_workers, cores, packaged, splits):
    assert thread_splits(best_workers, cores, packaged) == splits
    assert all(w * t <= cores for w, t in splits)


def test_a_trial_measured_again_is_judged_on_its_mean_and_worse_p99():
    from torchship.perf.tune import Trial, best_trial

    lucky = Trial(1, 16, 5, 1, throughput=5800.0, p50_ms=2.6, p99_ms=4.7, failed=0)
    steady = Trial(2, 8, 5, 1, throughput=5600.0, p50_ms=2.5, p99_ms=8.0, failed=0)
    lucky2 = lucky.again(Trial(1, 16, 5, 1, throughput=4200.0, p50_ms=3.4, p99_ms=6.1, failed=0))
    steady2 = steady.again(Trial(2, 8, 5, 1, throughput=5500.0, p50_ms=2.5, p99_ms=7.0, failed=1))
    assert (lucky2.throughput, lucky2.p50_ms, lucky2.p99_ms, lucky2.runs) == (5000.0, 3.0, 6.1, 2)
    assert steady2.p99_ms == 8.0 and steady2.failed == 1  # the worse p99, every failure kept
    assert best_trial([lucky2, steady.again(steady)], 10) == steady.again(steady)
    assert best_trial([lucky2, steady2], 10) == lucky2  # a failed request disqualifies


def test_threads_copy_is_signed_verified_and_changes_only_the_model_config(mlp_run, tmp_path):
    keys = tmp_path / "keys"
    archiver.ensure_keys(keys)
    original = archiver.package(example_spec("mlp", mlp_run, "1.0"), tmp_path / "store", keys).path
    assert packaged_threads(original) == 1
    copy = threads_copy(original, 2, tmp_path / "store", keys, name="tune-mlp", version="1.0-threads2")
    assert copy.name == "tune-mlp-1.0-threads2.mar" and packaged_threads(copy) == 2
    report = archiver.ensure_verified(copy, public_key=archiver.public_key_path(keys))  # signed like any archive
    assert report.ok and report.provenance["checkpoint"] == json.loads((mlp_run / "meta.json").read_text())
    own = {"MAR-INF/MANIFEST.json", "torchship-provenance.json"}  # name, version and digests differ by design
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(copy) as b:
        assert a.namelist() == b.namelist()
        changed = [n for n in a.namelist() if n not in own and a.read(n) != b.read(n)]
        config = yaml.safe_load(b.read("model-config.yaml"))
    assert changed == ["model-config.yaml"]
    assert config["handler"]["threads"] == 2 and config["responseTimeout"] == 30  # the rest kept

    # the handler in that copy runs two torch threads
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(copy).extractall(folder)
    sys.path.insert(0, str(folder))
    before = torch.get_num_threads()
    try:
        from mlp_handler import MLPHandler

        MLPHandler().initialize(make_context(folder, yaml_config=config))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        sys.path.remove(str(folder))


def test_threads_copy_of_a_tampered_archive_is_refused(mlp_run, tmp_path):
    from tests.fixtures import zipcraft
    from torchship.sdk.errors import VerificationError

    keys = tmp_path / "keys"
    archiver.ensure_keys(keys)
    original = archiver.package(example_spec("mlp", mlp_run, "1.0"), tmp_path / "store", keys).path
    zipcraft.hide_entry(original, "mlp_handler.py", b"import os\n")
    with pytest.raises(VerificationError, match="layout"):
        threads_copy(original, 2, tmp_path / "store", keys, name="tune-mlp", version="1.0-threads2")
    assert not (tmp_path / "store" / "tune-mlp-1.0-threads2.mar").exists()
