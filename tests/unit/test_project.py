"""Project: the CLI's operations from Python, each recording its registry event in one place."""

from __future__ import annotations

from torchship import Project, archiver
from torchship.archiver import example_spec

from .test_client import make

DESCRIBE = [
    {
        "modelName": "mlp",
        "modelVersion": "1.0",
        "modelUrl": "mlp-1.0.mar",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 8,
        "maxBatchDelay": 10,
        "workers": [{"id": "9000", "status": "READY", "pid": 1}],
    }
]


def project_with_fake_server(tmp_path):
    def responder(req):
        return 200, DESCRIBE if req.method == "GET" else {"status": "done"}

    p = Project(tmp_path)
    p._client, transport = make(responder)
    return p, transport


def test_every_operation_leaves_the_history_the_cli_leaves(tmp_path):
    p, t = project_with_fake_server(tmp_path)
    assert p.scale("mlp", min_workers=2, version="1.0") == "done"
    p.set_default("mlp", "1.0")
    p.unregister("mlp", "1.0")
    kinds = [(e.version, e.kind, e.detail) for e in reversed(p.history("mlp").events)]
    assert kinds == [
        ("1.0", "scaled", {"min_workers": 2, "max_workers": 2}),
        ("1.0", "default_set", {"via": "set-default"}),
        ("1.0", "unregistered", {"via": "unregister"}),
    ]
    # the only version is taken down workers first (torchship.ops.takedown)
    assert [(r.method, t.path(r)) for r in t.requests if r.method != "GET"][:4] == [
        ("PUT", "/models/mlp/1.0"),
        ("PUT", "/models/mlp/1.0/set-default"),
        ("PUT", "/models/mlp/1.0"),
        ("DELETE", "/models/mlp/1.0"),
    ]


def test_package_records_the_archive_and_history_joins_it_with_the_server(tmp_path, mlp_run):
    p, _ = project_with_fake_server(tmp_path)
    result = p.package("mlp", version="1.0", checkpoint=mlp_run)
    assert result.path == p.store / "mlp-1.0.mar" and result.path.is_file()
    assert p.verify(result.path).ok  # signed with the project's own key
    h = p.history("mlp")
    assert h.live and [v["version"] for v in h.versions] == ["1.0"]
    assert h.versions[0]["registered"] and h.versions[0]["default"]
    assert h.versions[0]["digest"] == result.digest and [e.kind for e in h.events] == ["packaged"]


def test_a_handler_of_your_own_is_packaged_with_its_files(tmp_path, mlp_run):
    p, _ = project_with_fake_server(tmp_path)
    spec = example_spec("mlp", mlp_run, "1.0")
    result = p.package(
        "mine",
        handler=spec.handler,
        weights=spec.weights,
        extra_files=spec.extra_files,
        model_config={"handler": {"threads": 1}},
        threads=2,
    )
    assert result.path.name == "mine-1.0.mar"  # the next free version
    import zipfile

    import yaml

    with zipfile.ZipFile(result.path) as z:
        assert yaml.safe_load(z.read("model-config.yaml")) == {"handler": {"threads": 2}}


def test_bad_names_are_refused_before_anything_is_done(tmp_path):
    import pytest

    from torchship import errors as E

    p, t = project_with_fake_server(tmp_path)
    for call in (
        lambda: p.scale("../x", min_workers=1),
        lambda: p.history("a/b"),
        lambda: p.train("x\ny"),
        lambda: p.package("../evil"),
    ):
        with pytest.raises(E.BadInput):
            call()
    assert t.requests == [] and not (tmp_path / ".torchship" / "registry.db").exists()


def test_project_finds_its_root_and_keys(tmp_path, monkeypatch):
    (tmp_path / "config.properties").write_text("model_store=store\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    p = Project.find()
    assert p.root == tmp_path and p.store == tmp_path / "store"
    assert p.public_key == archiver.public_key_path(tmp_path / ".torchship" / "keys")
