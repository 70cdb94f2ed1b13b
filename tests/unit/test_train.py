import json

import torch
from safetensors.torch import load_file

from torchship.train import mlp
from torchship.train.common import latest_run, shuffled_batches, train_epoch


def test_mlp_quick_training_writes_weights_and_lineage(mlp_run):
    meta = json.loads((mlp_run / "meta.json").read_text())
    weights = load_file(str(mlp_run / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "fc1.weight": (50, 100),
        "fc1.bias": (50,),
        "fc2.weight": (10, 50),
        "fc2.bias": (10,),
    }
    assert meta["model"] == {"kind": "mlp", "architecture": {"in_features": 100, "hidden": 50, "classes": 10}}
    assert meta["hyper_parameters"]["optimizer"] == "Adam" and meta["hyper_parameters"]["quick"] is True
    for key in ("seed", "torch_version", "git_commit", "created", "metrics", "data", "history"):
        assert key in meta
    assert meta["torch_version"] == torch.__version__
    assert meta["data"]["fingerprint"].startswith("sha256:")
    assert len(meta["history"]) == meta["hyper_parameters"]["epochs"]
    # far above chance (0.1): the model learnt the teacher's rule
    assert meta["metrics"]["val_accuracy"] >= 0.8


def test_same_seed_same_data_other_seed_other_data():
    x1, y1 = mlp.make_data(0, 100)
    x2, y2 = mlp.make_data(0, 100)
    x3, _ = mlp.make_data(1, 100)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)


def test_training_is_reproducible(tmp_path):
    a = mlp.train(tmp_path, seed=3, epochs=2, samples=500, progress=False)
    b = mlp.train(tmp_path, seed=3, epochs=2, samples=500, progress=False)
    assert a.run_dir != b.run_dir
    wa, wb = load_file(str(a.run_dir / "model.safetensors")), load_file(str(b.run_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert latest_run(tmp_path, "mlp") == b.run_dir


def test_progress_is_shown(tmp_path, capsys):
    mlp.train(tmp_path, epochs=2, samples=200)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val_acc" in err


def test_the_task_does_not_depend_on_the_sample_count():
    teacher = mlp.make_teacher(0)
    for n in (50, 500):
        x, y = mlp.make_data(0, n)
        assert torch.equal(y, (x @ teacher).argmax(dim=1))


def test_shuffled_labels_give_a_bad_model(tmp_path):
    bad = mlp.train(tmp_path, seed=1, epochs=3, samples=2000, progress=False, shuffle_labels=True)
    assert bad.metrics["val_accuracy"] < 0.3


def test_shuffled_batches_cover_every_index_once_in_a_seeded_order():
    batches = shuffled_batches(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = shuffled_batches(10, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_train_epoch_is_the_plain_loop():
    """The shared epoch step trains exactly as the loop each script had: same weights, same mean loss."""
    x, y = mlp.make_data(0, 70)

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(100, 10)
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, optimiser = fresh()
    order, total = torch.randperm(70, generator=torch.Generator().manual_seed(1)), 0.0
    for start in range(0, 70, 32):
        idx = order[start : start + 32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += loss.item() * len(idx)

    shared, shared_optimiser = fresh()
    mean = train_epoch(
        shared,
        shared_optimiser,
        shuffled_batches(70, 32, torch.Generator().manual_seed(1)),
        lambda idx: torch.nn.functional.cross_entropy(shared(x[idx]), y[idx]),
    )
    assert mean == total / 70
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), shared.parameters()))
