"""Taking a version off the server (torchship.ops.takedown): its workers first, then the version, so that
TorchServe 0.12's DELETE race (a 500 that leaves a name with no version) cannot happen; never the workers
of a default that TorchServe will refuse to remove."""

from __future__ import annotations

import pytest

from torchship import errors as E
from torchship.ops import takedown
from torchship.ops.takedown import take_down, unregister_after_load

from .test_client import make

CME = (500, {"code": 500, "type": "InternalServerException", "message": "java.util.ConcurrentModificationException"})


def versions(*pairs):
    """GET /models/NAME/all and GET /models/NAME answers: (version, is default) pairs."""
    entries = [{"modelName": "m", "modelVersion": v, "modelUrl": f"m-{v}.mar", "workers": []} for v, _ in pairs]
    default = [e for e, (_, d) in zip(entries, pairs) if d]
    return entries, default


def server(*pairs, answers=()):
    """A management API with these versions; PUT and DELETE answered from `answers` in turn (then 200)."""
    every, default = versions(*pairs)
    script = iter(answers)

    def respond(req):
        if req.method == "GET":
            return 200, every if req.url.rstrip("/").endswith("/all") else default
        return next(script, (200, {"status": "done"}))

    return make(respond)


def calls(transport):
    return [(r.method, transport.path(r)) for r in transport.requests if r.method != "GET"]


def test_a_version_is_scaled_to_zero_before_it_is_deleted_and_a_busy_server_is_waited_out(monkeypatch):
    monkeypatch.setattr(takedown.time, "sleep", lambda s: None)
    ts, t = server(("1.0", True), ("2.0", False), answers=[CME, (200, {"status": "scaled"})])
    assert take_down(ts, "m", "2.0") == "done"
    assert calls(t) == [("PUT", "/models/m/2.0")] * 2 + [("DELETE", "/models/m/2.0")]
    assert t.query(t.requests[-2]) == {"min_worker": "0", "max_worker": "0", "synchronous": "true"}


def test_the_only_version_goes_the_same_way():
    ts, t = server(("1.0", True))
    take_down(ts, "m")
    assert calls(t) == [("PUT", "/models/m/1.0"), ("DELETE", "/models/m/1.0")]


def test_the_default_of_several_is_left_to_torchserve_to_refuse_its_workers_untouched():
    refused = (403, {"code": 403, "type": "InvalidModelVersionException", "message": "Cannot remove default version"})
    for version in ("1.0", None):
        ts, t = server(("1.0", True), ("2.0", False), answers=[refused])
        with pytest.raises(E.TorchServeError, match="Cannot remove default version"):
            take_down(ts, "m", version)
        assert calls(t) == [("DELETE", "/models/m/1.0" if version else "/models/m")]


def test_what_does_not_exist_gets_torchserves_own_not_found():
    gone = (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: m"})
    ts, t = make(lambda req: gone)
    with pytest.raises(E.ModelNotFound):
        take_down(ts, "m", "1.0")
    assert [r.method for r in t.requests][-1] == "DELETE"
    ts, t = server(
        ("1.0", True), answers=[(404, {"code": 404, "type": "ModelVersionNotFoundException", "message": "no 9.0"})]
    )
    with pytest.raises(E.TorchServeError):
        take_down(ts, "m", "9.0")
    assert calls(t) == [("DELETE", "/models/m/9.0")]


def test_unregister_after_load_stops_the_workers_first_and_waits_out_torchserves_busy_500(monkeypatch):
    """TorchServe 0.12 can answer a DELETE right after heavy load with 500 ConcurrentModificationException,
    having dropped the version but not the name (which then refuses new registrations): a trial scales its
    workers to zero first, trying again while the server is busy, and only then unregisters."""
    monkeypatch.setattr(takedown.time, "sleep", lambda s: None)
    cme = "java.util.ConcurrentModificationException"
    busy = (500, {"code": 500, "type": "InternalServerException", "message": cme})
    answers = iter([busy, busy, (200, {"status": "scaled"}), busy, (200, {"status": "unregistered"})])
    ts, transport = make(lambda req: next(answers))
    unregister_after_load(ts, "tune-mlp-3")
    assert [r.method for r in transport.requests] == ["PUT"] * 3 + ["DELETE"] * 2
    scale = transport.requests[0]
    assert "/models/tune-mlp-3" in scale.url and "min_worker=0" in scale.url and "synchronous=true" in scale.url

    ts, transport = make(lambda req: (404, {"code": 404, "type": "ModelNotFoundException", "message": "gone"}))
    unregister_after_load(ts, "tune-mlp")  # already gone is fine
    assert [r.method for r in transport.requests] == ["PUT", "DELETE"]
    ts, transport = make(lambda req: (500, {"code": 500, "type": "InternalServerException", "message": "busy"}))
    with pytest.raises(E.ServerError):
        unregister_after_load(ts, "tune-mlp", tries=3)
    assert [r.method for r in transport.requests] == ["PUT"] * 3  # never a DELETE while workers may run
