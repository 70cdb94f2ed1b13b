import sqlite3
import threading

import pytest

from torchship.ops.desired import parse_desired
from torchship.ops.registry import Registry
from torchship.sdk.errors import ConfigError


@pytest.fixture
def reg(tmp_path):
    with Registry(tmp_path / "registry.db") as r:
        yield r


PROV = {
    "checkpoint": {
        "run": "20261128T000000Z",
        "data": {"fingerprint": "sha256:abc"},
        "git_commit": "deadbeef",
        "metrics": {"val_accuracy": 0.88},
    }
}


def test_archives_keep_their_lineage(reg, tmp_path):
    reg.record_archive(name="m", version="1.0", digest="sha256:1", path=tmp_path / "m-1.0.mar", provenance=PROV)
    rec = reg.archive("m", "1.0")
    assert (rec.checkpoint_run, rec.data_fingerprint, rec.git_commit) == ("20261128T000000Z", "sha256:abc", "deadbeef")
    assert rec.metrics == {"val_accuracy": 0.88}
    assert reg.provenance("m", "1.0") == PROV
    assert [e.kind for e in reg.events("m")] == ["packaged"]


def test_events_newest_first_and_filtered(reg):
    for kind in ("registered", "default_set", "scaled"):
        reg.record("m", "1.0", kind, n=1)
    assert [e.kind for e in reg.events("m")] == ["scaled", "default_set", "registered"]
    assert [e.kind for e in reg.events("m", kinds=("registered",))] == ["registered"]
    with pytest.raises(ValueError):
        reg.record("m", "1.0", "made-up")


def test_a_failed_write_leaves_nothing_half_written(reg, tmp_path, monkeypatch):
    class Boom(Exception):
        pass

    real = reg._conn

    class Flaky:
        """The connection fails between the archive row and its event."""

        def __init__(self):
            self.calls = 0

        @property
        def in_transaction(self):
            return real.in_transaction

        def cursor(self):
            cur = real.cursor()
            flaky = self

            class C:
                lastrowid = None

                def execute(self, sql, args=()):
                    if sql.startswith("INSERT INTO events") and flaky.calls == 0:
                        flaky.calls += 1
                        raise Boom()
                    return cur.execute(sql, args)

            return C()

    monkeypatch.setattr(reg, "_conn", Flaky())
    with pytest.raises(Boom):
        reg.record_archive(name="m", version="1.0", digest="d", path=tmp_path / "x", provenance=PROV)
    monkeypatch.setattr(reg, "_conn", real)
    assert reg.archive("m", "1.0") is None and reg.events("m") == []


def test_concurrent_writers_lose_nothing(reg):
    threads = [threading.Thread(target=lambda: [reg.record("m", "1", "scaled") for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg.events("m")) == 200
    assert sqlite3.connect(reg.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_previous_default_skips_versions_rolled_back_from(reg):
    reg.record("m", "1.0", "default_set")
    reg.record("m", "2.0", "promoted")
    assert reg.previous_default("m", "2.0") == "1.0"
    reg.record("m", "1.0", "rolled_back", **{"from": "2.0"})
    reg.record("m", "3.0", "promoted")
    # 2.0 was rolled back from: never a rollback target
    assert reg.previous_default("m", "3.0") == "1.0"
    assert reg.previous_default("other", None) is None


@pytest.mark.parametrize(
    "raw, message",
    [
        ({}, "top-level 'models:'"),
        ({"models": {"m": {"versions": []}}}, "non-empty list"),
        ({"models": {"m": {"versions": ["1.0"], "default": "2.0"}}}, "not among the versions"),
        ({"models": {"m": {"versions": ["1.0"], "workers": {"min": 3, "max": 1}}}}, "min (3) is above max"),
        ({"models": {"m": {"versions": ["1.0"], "batch_size": 0}}}, "batch_size: an integer >= 1"),
        ({"models": {"m": {"versions": ["1.0"], "batchsize": 8}}}, "unknown key"),
        ({"models": {"m": {"versions": ["1.0", "1.0"]}}}, "listed twice"),
        ({"models": {"../x": {"versions": ["1.0"]}}}, "invalid model name"),
        ({"models": {"m": {"versions": ["1.0"]}}, "extra": 1}, "unknown top-level"),
    ],
)
def test_desired_state_is_validated(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_desired(raw)


def test_desired_state_defaults():
    state = parse_desired({"models": {"m": {"versions": [1.0, "2.0"], "workers": 2}}})
    m = state.models["m"]
    assert m.versions == ("1.0", "2.0") and m.default == "2.0" and (m.min_workers, m.max_workers) == (2, 2)
    assert parse_desired(__import__("yaml").safe_load(state.to_yaml())) == state


# ---------------------------------------------------------------- names and versions: the one rule

from torchship.archiver.names import InvalidName  # noqa: E402

from .test_names import BAD_NAMES, BAD_VERSIONS, short_id  # noqa: E402


@pytest.mark.parametrize("bad", [n for n in BAD_NAMES if len(n) < 1000], ids=short_id)
def test_desired_state_names_follow_the_one_rule(bad):
    with pytest.raises(ConfigError, match="invalid model name") as info:
        parse_desired({"models": {bad: {"versions": ["1.0"]}}})
    assert isinstance(info.value, InvalidName)  # bad input: the CLI exits 7
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", BAD_VERSIONS + [None, True, [1], {"v": 1}, -1, 1e100], ids=short_id)
def test_desired_state_versions_follow_the_one_rule(bad):
    with pytest.raises(ConfigError, match="invalid version") as info:
        parse_desired({"models": {"m": {"versions": [bad]}}})
    assert isinstance(info.value, InvalidName) and "models.m.versions" in str(info.value)
    with pytest.raises(ConfigError, match="invalid version"):
        parse_desired({"models": {"m": {"versions": ["1.0"], "default": bad}}})


def test_desired_state_number_versions_still_read_as_before():
    state = parse_desired({"models": {"m": {"versions": [1.0, 2, "2.1-rc1"], "default": 2}}})
    assert state.models["m"].versions == ("1.0", "2", "2.1-rc1") and state.models["m"].default == "2"


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\nb", "", None], ids=short_id)
def test_registry_records_only_names_it_can_give_back(reg, tmp_path, bad):
    with pytest.raises(InvalidName):
        reg.record(bad, "1.0", "registered")
    with pytest.raises(InvalidName):
        reg.record("m", bad if bad is not None else "..", "registered")
    with pytest.raises(InvalidName):
        reg.record_archive(name=bad, version="1.0", digest="d", path=tmp_path / "x", provenance=PROV)
    assert reg.events("m") == [] and reg.archives("m") == []
    reg.record("m", None, "scaled")  # no version: "the default"
    assert [e.kind for e in reg.events("m")] == ["scaled"]


class Recorder:
    """A client that records every call, and fails the test if a request would be sent."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            raise AssertionError(f"client.{name} was called")

        return call


@pytest.mark.parametrize(
    "name, version", [("../m", "2.0"), ("m", "../2.0"), ("m", "2.0\n"), ("a/b", "1")], ids=short_id
)
def test_rollout_and_rollback_check_before_any_request_or_record(reg, tmp_path, name, version):
    from torchship.ops.rollout import rollback, rollout

    client = Recorder()
    with pytest.raises(InvalidName):
        rollout(client, tmp_path, name, version, golden=[], registry=reg)
    if name != "m":
        with pytest.raises(InvalidName):
            rollback(client, name, reg)
    assert client.calls == [] and reg.events(name if name == "m" else "m") == []


def test_plan_refuses_a_live_version_it_could_not_remove():
    """A version registered by other means with a name no request can carry: apply stops before
    changing anything, and says so."""
    from torchship.ops.desired import plan
    from torchship.sdk.errors import TorchServeError
    from torchship.sdk.types import ModelDescription

    class Live:
        def versions(self, name):
            return [
                ModelDescription.from_json(
                    {
                        "modelName": "m",
                        "modelVersion": v,
                        "minWorkers": 1,
                        "maxWorkers": 1,
                        "batchSize": 1,
                        "maxBatchDelay": 100,
                        "workers": [],
                    },
                    is_default=(v == "1.0"),
                )
                for v in ("1.0", "x/../y")
            ]

    with pytest.raises(TorchServeError, match="cannot address"):
        plan(Live(), parse_desired({"models": {"m": {"versions": ["1.0"], "batch_size": 1}}}))
