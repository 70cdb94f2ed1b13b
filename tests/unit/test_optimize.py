"""`torchship package --optimize`: cheaper variants, gated on held-out accuracy, made by the handler at load."""

from __future__ import annotations

import copy
import json
import zipfile

import mlp_handler
import numpy as np
import pytest
import torch
import torchship_base_handler as base
import yaml
from torch import nn

from tests.helpers import rows
from torchship import Project
from torchship.archiver import optimize
from torchship.archiver.errors import ArchiveError
from torchship.archiver.optimize import Trial

from .handler_context import decoded, make_context, run_batch


class FakeHeldOut:
    """A held-out set whose metric is `original` for a float model and `variant` for a quantized one."""

    name = "val_accuracy"
    size = 1000

    def __init__(self, original: float, variant: float) -> None:
        self.original, self.variant = original, variant

    def metric(self, model: nn.Module) -> float:
        quantized = any("quantized" in type(m).__module__ for m in model.modules())
        return self.variant if quantized else self.original

    def inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(n, 8),)


@pytest.fixture(scope="module")
def brief_mlp_run(tmp_path_factory):
    """A briefly trained mlp (2 epochs: the gate's figures, not the model's quality, are under test)."""
    from torchship.train import mlp

    return mlp.train(tmp_path_factory.mktemp("ck-opt"), epochs=2, progress=False).run_dir


@pytest.fixture(scope="module")
def brief_mlp_reference(brief_mlp_run):
    from tests.conftest import reference_model

    return reference_model(brief_mlp_run)


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_the_gate_refuses_a_variant_that_loses_more_than_half_a_point():
    with pytest.raises(ArchiveError, match=r"int8-dynamic fails the accuracy gate: .*-0\.60 points"):
        optimize.gate(small_mlp(), FakeHeldOut(0.900, 0.894), "int8-dynamic", measure=False)
    decision = optimize.gate(small_mlp(), FakeHeldOut(0.900, 0.894), "auto", measure=False)
    assert decision.variant is None and decision.reason == "every variant loses more accuracy than allowed"
    [trial] = decision.trials
    assert trial.variant == "int8-dynamic" and not trial.eligible and trial.delta_points == -0.6


def test_a_variant_within_half_a_point_passes():
    decision = optimize.gate(small_mlp(), FakeHeldOut(0.900, 0.896), "int8-dynamic", measure=False)
    assert decision.variant == "int8-dynamic" and decision.trials[0].eligible
    record = decision.record()
    assert record["variant"] == "int8-dynamic" and record["tolerance_points"] == 0.5
    assert record["trials"][0]["delta_points"] == -0.4


def test_a_variant_that_changes_no_layer_is_refused():
    with pytest.raises(ArchiveError, match="channels-last changes none of this model's layers"):
        optimize.gate(small_mlp(), FakeHeldOut(0.9, 0.9), "channels-last", measure=False)
    with pytest.raises(ArchiveError, match="no variant called 'fp4'"):
        optimize.gate(small_mlp(), FakeHeldOut(0.9, 0.9), "fp4", measure=False)


def test_auto_takes_a_variant_only_when_it_pays():
    slow = Trial("int8-dynamic", 0.9, 0.0, True, {1: 0.4, 8: 0.5})
    fast = Trial("channels-last", 0.9, 0.0, True, {1: 1.0, 8: 2.1})
    lossy = Trial("int8-dynamic", 0.8, -10.0, False, {})
    assert optimize._choose([slow], True)[0] is None
    assert optimize._choose([slow, fast], True)[0] == "channels-last"
    assert optimize._choose([lossy], True)[0] is None
    lopsided = Trial("channels-last", 0.9, 0.0, True, {1: 0.8, 8: 3.0})  # slower alone: not taken
    assert optimize._choose([lopsided], True)[0] is None


def test_the_worker_applies_the_variant_and_refuses_unknown_ones():
    model = small_mlp()
    quantized = base.optimized(copy.deepcopy(model), "int8-dynamic")
    assert any("quantized" in type(m).__module__ for m in quantized.modules())
    assert base.optimized(model, None) is model and base.optimized(model, "none") is model
    for bad in ("fp4", 3, ["int8-dynamic"]):
        with pytest.raises(ValueError, match="handler.optimize"):
            base.optimized(model, bad)


def test_channels_last_gives_the_same_answers():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        expected = conv(x)
        got = base.optimized(copy.deepcopy(conv), "channels-last")(x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_an_optimized_archive_records_the_variant_and_serves_the_same_answers(
    tmp_path, brief_mlp_run, brief_mlp_reference
):
    mlp_run, mlp_reference = brief_mlp_run, brief_mlp_reference
    project = Project(tmp_path)
    result = project.package("mlp", version="1.0", checkpoint=mlp_run, optimize="int8-dynamic")
    assert project.verify(result.path).ok
    record = result.provenance["checkpoint"]["optimize"]
    assert record["variant"] == "int8-dynamic" and record["metric"] == "val_accuracy" and record["held_out"] == 2000
    assert abs(record["trials"][0]["delta_points"]) <= 0.5 and set(record["trials"][0]["speedup"]) == {"1", "8"}
    # the weights member is the run's float file, byte for byte: the variant is made at load
    weights = json.loads((mlp_run / "meta.json").read_text())["weights"]["sha256"]
    assert result.provenance["members"]["model.safetensors"]["sha256"] == weights

    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(result.path) as zf:
        zf.extractall(folder)
    config = yaml.safe_load((folder / "model-config.yaml").read_text())
    assert config["handler"] == {"threads": 1, "optimize": "int8-dynamic"}
    handler = mlp_handler.MLPHandler()
    handler.initialize(make_context(folder, yaml_config=config))
    assert any("quantized" in type(m).__module__ for m in handler.model.modules())

    data = rows(64, seed=3)
    ctx, results = run_batch(handler, [{"data": data}])
    [answers] = decoded(results)
    got = np.array([a["probabilities"] for a in answers])
    x = torch.tensor(data, dtype=torch.float32)
    with torch.inference_mode():
        gated = torch.softmax(optimize.apply_variant(mlp_reference, "int8-dynamic")(x), 1).numpy()
        original = torch.softmax(mlp_reference(x), 1).numpy()
    assert np.allclose(got, gated, atol=1e-5)  # exactly the variant the gate scored
    assert np.abs(got - original).max() < 0.15  # and close to the float model: int8 rounding only
    agree = np.mean([a["class_id"] == int(p.argmax()) for a, p in zip(answers, original)])
    assert agree >= 0.9


def test_a_handler_given_an_unknown_variant_fails_to_load(tmp_path, brief_mlp_run):
    mlp_run = brief_mlp_run
    for name in ("model.safetensors", "meta.json"):
        (tmp_path / name).write_bytes((mlp_run / name).read_bytes())
    with pytest.raises(ValueError, match="handler.optimize is 'int4'"):
        mlp_handler.MLPHandler().initialize(make_context(tmp_path, yaml_config={"handler": {"optimize": "int4"}}))
