"""tune's threads step without a server: which splits of the cores it tries, and the trial copy of
an archive whose handler then really runs that many torch threads."""

import sys
import zipfile

import pytest
import torch
import yaml

import archiver
from archiver import example_spec
from torchship.tune import packaged_threads, thread_splits, threads_copy

from .handler_context import make_context


@pytest.mark.parametrize("best_workers, cores, packaged, splits", [
    (1, 2, 1, [(1, 2)]),                                # two cores: one worker with both
    (2, 2, 1, [(1, 2)]),                                # never 2 workers x 2 threads on 2 cores
    (2, 16, 1, [(1, 2), (1, 16), (2, 2), (2, 8)]),      # bounded: not every power of two
    (1, 1, 1, []),                                      # one core: nothing to try
    (1, 2, 2, []),                                      # packaged with 2 already: tried in steps 1-3
])
def test_thread_splits_never_oversubscribe(best_workers, cores, packaged, splits):
    assert thread_splits(best_workers, cores, packaged) == splits
    assert all(w * t <= cores for w, t in splits)


def test_threads_copy_changes_only_the_model_config(mlp_run, tmp_path):
    original = archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path / "store").path
    assert packaged_threads(original) == 1
    copy = threads_copy(original, 2, tmp_path / "copy.mar")
    assert packaged_threads(copy) == 2
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(copy) as b:
        assert a.namelist() == b.namelist()
        changed = [n for n in a.namelist() if a.read(n) != b.read(n)]
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
