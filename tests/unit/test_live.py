"""Live rollouts (torchship.ops.live, the gateway's Split): the nginx config that splits and mirrors, and how
the candidate is judged from the gateway's access log and the capture."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_gateway import HAS_NGINX, nginx_test, spec
from torchship.gateway.nginx import CANARY_PATH, SHADOW_PATH, SHADOWED_PATH, Split, render_conf
from torchship.ops.live import ArmFigures, live_figures, read_access, shadow_agreement
from torchship.sdk.errors import ConfigError


def test_a_split_draws_canary_then_shadow_of_the_rest():
    assert Split("mlp", "2.0", 10, 50).shares == (10, 45)
    assert Split("mlp", "2.0", 0, 100).shares == (0, 100)
    assert Split("mlp", "2.0", 100, 100).shares == (100, 0)


@pytest.mark.parametrize(
    "model, version, canary, shadow, says",
    [
        ("mlp", "2.0", 101, 0, "canary is a percentage"),
        ("mlp", "2.0", 10, -1, "shadow is a percentage"),
        ("m;lp", "2.0", 10, 0, "m;lp"),
        ("mlp", "2.0$x", 10, 0, "2.0$x"),
    ],
)
def test_a_split_nginx_could_misread_is_refused(model, version, canary, shadow, says):
    with pytest.raises((ConfigError, ValueError), match=says.replace("$", r"\$")):
        Split(model, version, canary, shadow)


def test_the_config_splits_only_requests_that_name_no_version(tmp_path):
    text = render_conf(spec(tmp_path, splits=(Split("mlp", "2.0", 10, 50),)))
    assert '"~^/predictions/mlp(?:\\?.*)?$" "mlp";' in text  # /predictions/mlp/1.0 is not in the rollout
    draw = text.split("$ts_draw_0 {", 1)[1].split("}", 1)[0]
    assert "10% canary;" in draw and "45% shadow;" in draw and '* "";' in draw
    assert f"rewrite ^ {CANARY_PATH} last;" in text and f"rewrite ^ {SHADOWED_PATH} last;" in text
    canary = text.split(f"location = {CANARY_PATH} {{", 1)[1].split("}", 1)[0]
    # the candidate's failures (and its absence) are answered by the default: no caller sees them
    assert "error_page 404 500 502 503 504 = @torchship_default;" in canary and "internal;" in canary
    assert "proxy_pass http://torchserve/predictions/$ts_live_model/$ts_candidate;" in canary
    # a mirrored request is answered by the default on a connection that is then closed: nginx would hold the
    # caller's next request on it until the candidate answered the mirror
    shadowed = text.split(f"location = {SHADOWED_PATH} {{", 1)[1].split("}", 1)[0]
    assert f"mirror {SHADOW_PATH};" in shadowed and "keepalive_timeout 0;" in shadowed
    shadow = text.split(f"location = {SHADOW_PATH} {{", 1)[1].split("}", 1)[0]
    assert "internal;" in shadow and "proxy_read_timeout 30s;" in shadow
    assert text.count(f"mirror {SHADOW_PATH};") == 1  # only the mirrored requests


def test_no_split_no_rewrite_and_no_mirror(tmp_path):
    text = render_conf(spec(tmp_path))
    assert "rewrite ^" not in text and f"mirror {SHADOW_PATH};" not in text and CANARY_PATH not in text
    assert "$ts_live_model" in text  # defined anyway: the access log names it
    canary_only = render_conf(spec(tmp_path, splits=(Split("mlp", "2.0", 10, 0),)))
    assert f"rewrite ^ {CANARY_PATH}" in canary_only


@pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed")
def test_nginx_accepts_the_split_config(tmp_path):
    splits = (Split("mlp", "2.0", 12.5, 33.33), Split("my-model.v2", "1.0", 0, 100))
    done = nginx_test(spec(tmp_path, splits=splits))
    assert done.returncode == 0, done.stderr


def entry(path, arm, status, upstream_status, upstream_time, live="mlp", time="2026-11-30T18:00:00+00:00"):
    return {
        "time": time,
        "live": live,
        "path": path,
        "arm": arm,
        "status": status,
        "upstream_status": upstream_status,
        "upstream_time": upstream_time,
    }


def test_figures_give_each_side_what_it_did():
    entries = [
        entry("/predictions/mlp", "", 200, "200", "0.002"),
        entry("/predictions/mlp", "shadow", 200, "200", "0.004"),
        entry("/predictions/mlp", "", 503, "503", "0.001"),  # the default failed a caller
        entry(CANARY_PATH, "canary", 200, "200", "0.003"),
        entry(CANARY_PATH, "canary", 200, "500 : 200", "0.010 : 0.002"),  # the candidate failed, the default answered
        entry(SHADOW_PATH, "shadow", 500, "500", "0.020"),  # a mirror: nobody got it
        entry(SHADOW_PATH, "shadow", 200, "200", "0.006"),
        entry(CANARY_PATH, "canary", 429, "", "", live="mlp"),  # refused by the gateway: no version answered
        entry(CANARY_PATH, "canary", 401, "", ""),
    ]
    f = live_figures(entries)
    assert (f["canary_requests"], f["shadow_requests"], f["client_errors"]) == (2, 2, 1)
    d, c = f["default"], f["candidate"]
    assert (d.requests, d.errors, d.p99_ms) == (3, 1, 4.0)
    assert (c.requests, c.errors, c.p50_ms, c.p99_ms) == (4, 2, 6.0, 20.0)
    assert c.error_rate == 0.5 and ArmFigures().error_rate == 0.0


def test_the_access_log_is_read_for_the_rollouts_model_and_time(tmp_path):
    log = tmp_path / "access.log"
    lines = [
        entry("/predictions/mlp", "", 200, "200", "0.002", time="2026-11-30T17:59:59+00:00"),  # before it began
        entry("/predictions/mlp", "", 200, "200", "0.002"),
        entry("/predictions/other", "", 200, "200", "0.002", live=""),
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"time": "torn')
    import datetime as dt

    since = dt.datetime.fromisoformat("2026-11-30T18:00:00+00:00").timestamp()
    assert len(read_access([log, tmp_path / "missing.log"], "mlp", since)) == 1


def test_shadow_answers_are_paired_by_the_gateways_id_on_their_decisive_fields():
    default = [
        {"gateway_id": "a", "status": 200, "answer": {"class_id": 1, "probabilities": [0.1, 0.9]}},
        {"gateway_id": "b", "status": 200, "answer": {"class_id": 2, "probabilities": [0.2, 0.8]}},
        {"gateway_id": "c", "status": 400, "answer": {"code": 400}},
        {"status": 200, "answer": {"class_id": 3}},  # no gateway id: not a live request
    ]
    candidate = [
        {"gateway_id": "a", "status": 200, "answer": {"class_id": 1, "probabilities": [0.3, 0.7]}},  # agrees
        {"gateway_id": "b", "status": 200, "answer": {"class_id": 5, "probabilities": [0.2, 0.8]}},  # does not
        {"gateway_id": "c", "status": 200, "answer": {"class_id": 1}},  # the default failed it: no pair
        {"gateway_id": "z", "status": 200, "answer": {"class_id": 1}},  # a canary request: no default answer
    ]
    assert shadow_agreement(default, candidate) == (2, 1)
