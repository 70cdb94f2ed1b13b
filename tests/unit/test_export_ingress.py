"""The k8s export's edge: an ingress-nginx Ingress with TLS, and a live rollout (canary weight, mirror)
as ingress-nginx can run it. Every manifest validates against the official schemas."""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.schema import validate
from torchship import archiver
from torchship.archiver import ArchiveSpec, example_spec
from torchship.ops.desired import parse_desired
from torchship.ops.export import CANARY_HEADER, MAX_REQUEST_SIZE, export
from torchship.sdk.errors import BadInput

pytest.importorskip("kubernetes")

NGINX = "nginx.ingress.kubernetes.io/"
HOST = "models.example.com"
DESIRED = {
    "models": {
        "mlp": {"versions": ["1.0", "2.0"], "default": "1.0", "workers": {"min": 1, "max": 2}},
        "other": {"versions": ["1.0"]},
    }
}


@pytest.fixture(scope="module")
def store(mlp_run, tmp_path_factory):
    store, keys = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("keys")
    spec = example_spec("mlp", mlp_run, "1.0")
    for name, v in (("mlp", "1.0"), ("mlp", "2.0"), ("other", "1.0")):
        archiver.package(
            ArchiveSpec(
                name, v, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
            ),
            store,
            keys,
        )
    return {"store": store, "pub": archiver.public_key_path(keys), "desired": parse_desired(DESIRED)}


def _export(store, out, **options):
    return export("k8s", store["desired"], store["store"], out, public_key=store["pub"], **options)


def _load(written):
    """{file name: manifest} of an export's answer, every manifest checked against the schemas."""
    docs = {}
    for path in written["manifests"]:
        doc = yaml.safe_load(path.read_text())
        assert validate(doc) == [], path.name
        assert "&id" not in path.read_text(), "plain YAML, no anchors"
        docs[path.name] = doc
    return docs


@pytest.fixture(scope="module")
def rollout(store, tmp_path_factory):
    """mlp 2.0 on trial: 10% canary and mirrored, namespace prod."""
    out = tmp_path_factory.mktemp("rollout")
    written = _export(store, out, host=HOST, namespace="prod", canary="mlp:2.0:10", shadow="mlp:2.0")
    return {"written": written, "docs": _load(written), "out": out}


def _snapshot(config):
    line = next(line for line in config.splitlines() if line.startswith("model_snapshot="))
    return json.loads(line.split("=", 1)[1])


def _routes(ingress):
    """(host, path, pathType, service, port) of each path of an Ingress."""
    return [
        (rule["host"], p["path"], p["pathType"], p["backend"]["service"]["name"], p["backend"]["service"]["port"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]


def _pod_labels(deployment):
    return deployment["spec"]["template"]["metadata"]["labels"]


def _selects(selector, labels):
    return selector.items() <= labels.items()


# ------------------------------------------------------------------ the Ingress and its TLS


def test_an_ingress_with_tls_exposes_only_the_inference_routes(store, tmp_path):
    docs = _load(_export(store, tmp_path, host=HOST))
    assert list(docs) == [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "horizontalpodautoscaler.yaml",
        "networkpolicy.yaml",
        "ingress.yaml",
    ]
    ingress = docs["ingress.yaml"]
    assert ingress["metadata"]["name"] == "torchship"
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": [HOST], "secretName": "torchship-tls"}]
    port = {"number": 8080}
    assert _routes(ingress) == [
        (HOST, "/ping", "Exact", "torchship", port),
        (HOST, "/predictions/mlp", "Prefix", "torchship", port),
        (HOST, "/v2/models/mlp/infer", "Exact", "torchship", port),
        (HOST, "/predictions/other", "Prefix", "torchship", port),
        (HOST, "/v2/models/other/infer", "Exact", "torchship", port),
    ]
    service = docs["service.yaml"]
    inference = next(p for p in service["spec"]["ports"] if p["name"] == "inference")
    assert inference["port"] == port["number"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations[NGINX + "backend-protocol"] == "HTTP"  # TorchServe in the pod speaks plain HTTP
    assert annotations[NGINX + "proxy-read-timeout"] == "130"
    assert not any(k.startswith(NGINX + "canary") or k.startswith(NGINX + "mirror") for k in annotations)


def test_the_tls_secret_is_named_by_the_option_or_after_the_export(store, tmp_path):
    ingress = _load(_export(store, tmp_path / "a", host=HOST, tls_secret="wildcard-example-com"))["ingress.yaml"]
    assert ingress["spec"]["tls"] == [{"hosts": [HOST], "secretName": "wildcard-example-com"}]
    ingress = _load(_export(store, tmp_path / "b", host=HOST, name="fraud"))["ingress.yaml"]
    assert ingress["spec"]["tls"] == [{"hosts": [HOST], "secretName": "fraud-tls"}]
    assert {r[3] for r in _routes(ingress)} == {"fraud"}


def _handler_body_limits():
    limits = {}
    for path in sorted((Path(__file__).resolve().parents[2] / "handlers").glob("*_handler.py")):
        module = importlib.import_module(path.stem)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "max_body_bytes"):
                limits[value.__name__] = value.max_body_bytes
    return limits


def test_the_body_limit_is_the_local_gateways_and_the_pods(store, tmp_path):
    """proxy-body-size is TorchServe's max_request_size, named in the pod's config too; every handler's
    own limit is below it (so no body a handler accepts is refused at the edge)."""
    docs = _load(_export(store, tmp_path, host=HOST))
    annotations = docs["ingress.yaml"]["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-body-size"] == str(MAX_REQUEST_SIZE) == "6553500"
    assert annotations[NGINX + "client-body-buffer-size"] == str(MAX_REQUEST_SIZE)  # bodies stay in memory
    assert f"max_request_size={MAX_REQUEST_SIZE}" in docs["configmap.yaml"]["data"]["config.properties"]
    limits = _handler_body_limits()
    assert {"MLPHandler", "FashionHandler", "SentimentHandler"} <= set(limits)
    assert limits["MLPHandler"] == 4 * 1024 * 1024
    assert max(limits.values()) <= MAX_REQUEST_SIZE, limits


def test_the_body_limit_is_the_local_gateways_default():
    from torchship.gateway import nginx as gateway

    assert gateway.Limits().max_body_bytes == MAX_REQUEST_SIZE


def _admitted(policy, pod_labels, namespace_labels, port):
    """Whether a pod with these labels, in a namespace with these labels (None: the policy's own),
    reaches `port` (NetworkPolicy semantics: a peer's selectors all match)."""
    for rule in policy["spec"]["ingress"]:
        if port not in {p["port"] for p in rule["ports"]}:
            continue
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                ns_ok = namespace_labels is not None and _selects(
                    peer["namespaceSelector"]["matchLabels"], namespace_labels
                )
            else:
                ns_ok = namespace_labels is None
            if ns_ok and _selects(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels):
                return True
    return False


CONTROLLER = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}


@pytest.mark.parametrize("option,namespace", [(None, "ingress-nginx"), ("edge", "edge")])
def test_the_network_policy_admits_the_controller_to_inference_only(store, tmp_path, option, namespace):
    docs = _load(_export(store, tmp_path, host=HOST, ingress_namespace=option))
    policy = docs["networkpolicy.yaml"]
    ns = {"kubernetes.io/metadata.name": namespace}
    assert _admitted(policy, CONTROLLER, ns, 8080)
    assert not _admitted(policy, CONTROLLER, ns, 8082), "metrics stay closed to the controller"
    assert not _admitted(policy, CONTROLLER, {"kubernetes.io/metadata.name": "other"}, 8080)
    assert not _admitted(policy, {"app.kubernetes.io/name": "ingress-nginx"}, ns, 8080), "its controller pods only"
    assert not _admitted(policy, CONTROLLER, None, 8080), "not a look-alike in the policy's own namespace"
    assert _admitted(policy, {"torchship-client": "true"}, None, 8080)


def test_without_host_no_ingress_and_the_policy_admits_no_controller(store, tmp_path):
    docs = _load(_export(store, tmp_path))
    assert not any(name.startswith("ingress") or "-" in name for name in docs)
    policy = docs["networkpolicy.yaml"]
    assert len(policy["spec"]["ingress"]) == 2
    assert not _admitted(policy, CONTROLLER, {"kubernetes.io/metadata.name": "ingress-nginx"}, 8080)


# ------------------------------------------------------------------ the live rollout


def test_the_rollout_writes_a_canary_torchserve_and_three_ingresses(rollout):
    assert list(rollout["docs"]) == [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "horizontalpodautoscaler.yaml",
        "networkpolicy.yaml",
        "service-stable.yaml",
        "configmap-canary.yaml",
        "deployment-canary.yaml",
        "service-canary.yaml",
        "horizontalpodautoscaler-canary.yaml",
        "networkpolicy-canary.yaml",
        "ingress.yaml",
        "ingress-rollout.yaml",
        "ingress-canary.yaml",
    ]
    for name, doc in rollout["docs"].items():
        assert doc["metadata"]["namespace"] == "prod", name
        assert list(doc["metadata"])[:2] == ["name", "namespace"]


def test_the_canary_pods_serve_the_candidate_as_the_default(rollout):
    docs = rollout["docs"]
    canary = _snapshot(docs["configmap-canary.yaml"]["data"]["config.properties"])
    assert list(canary["models"]) == ["mlp"], "the canary loads only the model on trial"
    mlp = canary["models"]["mlp"]
    assert {v: mlp[v]["defaultVersion"] for v in mlp} == {"1.0": False, "2.0": True}
    assert (mlp["2.0"]["minWorkers"], mlp["2.0"]["maxWorkers"], mlp["2.0"]["marName"]) == (1, 2, "mlp-2.0.mar")
    assert canary["modelCount"] == 2
    main = _snapshot(docs["configmap.yaml"]["data"]["config.properties"])
    assert {v: main["models"]["mlp"][v]["defaultVersion"] for v in ("1.0", "2.0")} == {"1.0": True, "2.0": False}
    assert set(main["models"]) == {"mlp", "other"}
    # the canary Deployment runs that config, from the same read-only archives
    deployment = docs["deployment-canary.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == docs["configmap-canary.yaml"]["metadata"]["name"]
    assert volumes["model-store"] == docs["deployment.yaml"]["spec"]["template"]["spec"]["volumes"][1]
    main_container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert pod["containers"][0]["securityContext"] == main_container["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert docs["horizontalpodautoscaler-canary.yaml"]["spec"]["scaleTargetRef"]["name"] == "torchship-canary"


def test_the_main_and_canary_services_select_their_own_pods_only(rollout):
    docs = rollout["docs"]
    main, canary = _pod_labels(docs["deployment.yaml"]), _pod_labels(docs["deployment-canary.yaml"])
    assert _selects(docs["service.yaml"]["spec"]["selector"], main)
    assert not _selects(docs["service.yaml"]["spec"]["selector"], canary), "the main Service never reaches the canary"
    assert _selects(docs["service-canary.yaml"]["spec"]["selector"], canary)
    assert not _selects(docs["service-canary.yaml"]["spec"]["selector"], main)
    assert docs["service-stable.yaml"]["spec"]["selector"] == docs["service.yaml"]["spec"]["selector"]
    assert [p["name"] for p in docs["service-stable.yaml"]["spec"]["ports"]] == ["inference"]
    policy = docs["networkpolicy-canary.yaml"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], canary)
    assert _admitted(policy, CONTROLLER, {"kubernetes.io/metadata.name": "ingress-nginx"}, 8080)
    assert _admitted(policy, {"torchship-client": "true"}, None, 8080)
    assert not _admitted(policy, {}, None, 8080)


def test_the_canary_ingress_weights_the_candidates_paths_only(rollout):
    docs = rollout["docs"]
    main, rolled, canary = docs["ingress.yaml"], docs["ingress-rollout.yaml"], docs["ingress-canary.yaml"]
    assert canary["metadata"]["annotations"] == {
        NGINX + "canary": "true",
        NGINX + "canary-weight": "10",
        NGINX + "canary-by-header": CANARY_HEADER,
    }
    # ingress-nginx merges a canary into the main Ingress's location of the same host, path and pathType
    assert [r[:3] for r in _routes(canary)] == [r[:3] for r in _routes(rolled)]
    assert [r[:3] for r in _routes(rolled)] == [
        (HOST, "/predictions/mlp", "Prefix"),
        (HOST, "/v2/models/mlp/infer", "Exact"),
    ]
    assert {r[3] for r in _routes(canary)} == {"torchship-canary"}
    # ... and into the primary Service of that location, for every path of it: the candidate's paths
    # have a Service of their own, which no other path uses
    assert {r[3] for r in _routes(rolled)} == {"torchship-stable"}
    assert {r[1] for r in _routes(main)} == {"/ping", "/predictions/other", "/v2/models/other/infer"}
    assert {r[3] for r in _routes(main)} == {"torchship"}
    assert "tls" not in canary["spec"], "ingress-nginx takes a canary host's TLS from the main Ingress"
    assert rolled["spec"]["tls"] == main["spec"]["tls"] == [{"hosts": [HOST], "secretName": "torchship-tls"}]


def test_the_mirror_copies_the_candidates_requests_to_the_canary_service(rollout):
    docs = rollout["docs"]
    annotations = docs["ingress-rollout.yaml"]["metadata"]["annotations"]
    service = docs["service-canary.yaml"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "inference")
    target = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port}"
    assert annotations[NGINX + "mirror-target"] == target + "$request_uri"
    assert annotations[NGINX + "mirror-request-body"] == "on"
    # the edge's limits hold on the candidate's paths too; the mirror is on no other path
    main = docs["ingress.yaml"]["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if "mirror" not in k} == main
    assert not any("mirror" in k for k in main)
    assert not any("mirror" in k for k in docs["ingress-canary.yaml"]["metadata"]["annotations"])


def test_a_shadow_alone_mirrors_without_a_canary_ingress(store, tmp_path):
    docs = _load(_export(store, tmp_path, host=HOST, namespace="prod", shadow="mlp:2.0"))
    assert "ingress-canary.yaml" not in docs and "service-stable.yaml" not in docs
    assert "deployment-canary.yaml" in docs and "service-canary.yaml" in docs
    rolled = docs["ingress-rollout.yaml"]
    assert {r[3] for r in _routes(rolled)} == {"torchship"}  # no canary: the main Service serves the paths
    assert rolled["metadata"]["annotations"][NGINX + "mirror-target"].startswith("http://torchship-canary.prod.svc.")


def test_a_canary_alone_has_no_mirror_and_a_weight_of_zero_is_the_header_only(store, tmp_path):
    docs = _load(_export(store, tmp_path, host=HOST, canary="mlp:2.0:0"))
    assert docs["ingress-canary.yaml"]["metadata"]["annotations"][NGINX + "canary-weight"] == "0"
    assert not any("mirror" in k for d in docs.values() for k in d["metadata"].get("annotations", {}))
    assert all("namespace" not in d["metadata"] for d in docs.values())


def test_a_later_export_removes_the_finished_rollouts_files(store, rollout, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(rollout["out"], out)
    written = _export(store, out, host=HOST)
    assert sorted(p.name for p in written["removed"]) == sorted(
        name for name in rollout["docs"] if "-" in name and name != "ingress.yaml"
    )
    assert sorted(p.name for p in (out / "k8s").glob("*.yaml")) == sorted(p.name for p in written["manifests"])
    written = _export(store, out)
    assert [p.name for p in written["removed"]] == ["ingress.yaml"]


# ------------------------------------------------------------------ refusals, before anything is written


@pytest.mark.parametrize(
    "options,message",
    [
        ({"canary": "mlp:3.0:10"}, "--canary: 3.0 is not among mlp's versions in the desired state (1.0, 2.0)"),
        ({"canary": "mlp:1.0:10"}, "--canary: 1.0 is already mlp's default"),
        ({"canary": "mlp:2.0:101"}, "--canary: the percent is a whole number from 0 to 100, not '101'"),
        ({"canary": "mlp:2.0:-1"}, "--canary: the percent is a whole number from 0 to 100"),
        ({"canary": "mlp:2.0:ten"}, "--canary: the percent is a whole number from 0 to 100"),
        ({"canary": "mlp:2.0:10.5"}, "--canary: the percent is a whole number from 0 to 100"),
        ({"canary": "2.0:10"}, "--canary takes MODEL:VERSION:PERCENT"),
        ({"canary": ":2.0:10"}, "--canary takes MODEL:VERSION:PERCENT: name the model and the version"),
        ({"canary": "nosuch:2.0:10"}, "--canary: no model 'nosuch' in the desired state (models: mlp, other)"),
        ({"shadow": "mlp:2.0:10", "namespace": "prod"}, "--shadow takes MODEL:VERSION, no percent"),
        ({"shadow": "mlp", "namespace": "prod"}, "--shadow takes MODEL:VERSION"),
        ({"shadow": "other:1.0", "namespace": "prod"}, "--shadow: 1.0 is already other's default"),
        ({"shadow": "mlp:2.0"}, "--shadow needs --namespace NS"),
        (
            {"canary": "mlp:2.0:10", "shadow": "other:1.0", "namespace": "prod"},
            "--shadow: 1.0 is already other's default",
        ),
        ({"host": "1.2.3.4"}, "--host: '1.2.3.4' is an IP address"),
        ({"host": "Models.example.com"}, "--host: 'Models.example.com' is not a DNS name"),
        ({"host": "models_1.example.com"}, "is not a DNS name"),
        ({"host": "models.example.com:443"}, "is not a DNS name"),
        ({"tls_secret": "My Secret"}, "--tls-secret: 'My Secret' is not a DNS name"),
        ({"namespace": "prod.eu"}, "--namespace: 'prod.eu' is not a DNS label"),
        ({"ingress_namespace": "-x"}, "--ingress-namespace: '-x' is not a DNS label"),
    ],
)
def test_bad_rollout_and_edge_options_are_refused_in_one_line(store, tmp_path, options, message):
    out = tmp_path / "out"
    with pytest.raises(BadInput) as caught:
        _export(store, out, **{"host": HOST, **options})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists(), "refused before anything is written"


def test_one_candidate_per_export(store, tmp_path):
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0", "2.0", "3.0"], "default": "1.0"}}})
    with pytest.raises(BadInput, match="--canary and --shadow name one candidate .*: mlp 2.0 and mlp 3.0 differ"):
        export(
            "k8s",
            desired,
            store["store"],
            tmp_path / "out",
            public_key=store["pub"],
            host=HOST,
            namespace="prod",
            canary="mlp:2.0:5",
            shadow="mlp:3.0",
        )


@pytest.mark.parametrize(
    "options,message",
    [
        ({"canary": "mlp:2.0:10"}, "--canary needs --host HOST"),
        ({"tls_secret": "x-tls", "shadow": "mlp:2.0"}, "--tls-secret, --shadow need --host HOST"),
        ({"ingress_namespace": "edge"}, "--ingress-namespace needs --host HOST"),
    ],
)
def test_the_edge_options_need_a_host(store, tmp_path, options, message):
    with pytest.raises(BadInput, match=message):
        _export(store, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
    assert _export(store, tmp_path / "ns", namespace="prod")["manifests"]  # a namespace alone is fine


def test_the_edge_is_for_the_k8s_export(store, tmp_path):
    with pytest.raises(BadInput, match="--host, --canary: for the k8s export only"):
        export(
            "kserve",
            store["desired"],
            store["store"],
            tmp_path / "out",
            public_key=store["pub"],
            host=HOST,
            canary="mlp:2.0:10",
        )
    assert not (tmp_path / "out").exists()


def test_the_validator_catches_a_broken_ingress(rollout):
    ingress = yaml.safe_load((rollout["out"] / "k8s" / "ingress.yaml").read_text())
    ingress["spec"]["tls"][0]["secret"] = ingress["spec"]["tls"][0].pop("secretName")
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    del path["pathType"]
    path["backend"]["service"]["port"]["number"] = "8080"
    ingress["metadata"]["annotations"][NGINX + "canary-weight"] = 10
    problems = validate(ingress)
    assert any("secret: unknown field of V1IngressTLS" in p for p in problems)
    assert any("pathType" in p and "Field required" in p for p in problems)
    assert any("port.number: expected int" in p for p in problems)
    assert any("canary-weight: expected str" in p for p in problems)


# ------------------------------------------------------------------ the command


def test_the_cli_writes_the_rollout_and_names_the_tls_secret(store, tmp_path, monkeypatch, capsys):
    from torchship.cli import main

    project = tmp_path / "project"
    shutil.copytree(store["store"], project / "model_store")
    shutil.copytree(store["pub"].parent, project / ".torchship" / "keys")
    (project / "deploy.yaml").write_text(yaml.safe_dump(DESIRED))
    monkeypatch.chdir(project)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    args = ["export", "k8s", "--out", "out", "--host", HOST, "--namespace", "prod"]
    assert main([*args, "--canary", "mlp:2.0:25", "--shadow", "mlp:2.0", "--tls-secret", "edge-cert"]) == 0
    said = capsys.readouterr().out
    assert "wrote out/k8s/ingress-canary.yaml" in said and "Secret edge-cert (type kubernetes.io/tls)" in said
    canary = yaml.safe_load((project / "out" / "k8s" / "ingress-canary.yaml").read_text())
    assert canary["metadata"]["annotations"][NGINX + "canary-weight"] == "25"
    assert main([*args, "--canary", "mlp:1.0:25"]) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.0 is already mlp's default" in err
    assert main(args) == 0
    assert "removed out/k8s/ingress-canary.yaml" in capsys.readouterr().out


# ------------------------------------------------------------------ encrypted archives: the canary's key


@pytest.fixture(scope="module")
def sealed_store(mlp_run, tmp_path_factory):
    """mlp 2.0 encrypted, mlp 1.0 and other 1.0/2.0 plain; the keyring that opens mlp 2.0."""
    from torchship.handlers import torchship_crypto

    store, keys, work = (tmp_path_factory.mktemp(n) for n in ("sealed-store", "sealed-keys", "sealed-work"))
    keyring = work / "model-keys.json"
    keyring.write_text(torchship_crypto.keyring_text("mk-1", {"mk-1": torchship_crypto.new_key()}))
    keyring.chmod(0o600)
    spec = example_spec("mlp", mlp_run, "1.0")
    for name, v in (("mlp", "1.0"), ("other", "1.0"), ("other", "2.0")):
        archiver.package(
            ArchiveSpec(
                name, v, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
            ),
            store,
            keys,
        )
    archiver.package(example_spec("mlp", mlp_run, "2.0"), store, keys, model_key=archiver.load_keyring(keyring))
    desired = parse_desired(
        {"models": {"mlp": {"versions": ["1.0", "2.0"], "default": "1.0"}, "other": {"versions": ["1.0", "2.0"]}}}
    )
    return {"store": store, "pub": archiver.public_key_path(keys), "desired": desired, "keyring": keyring}


@pytest.mark.parametrize("candidate,mounted", [("mlp:2.0:10", True), ("other:1.0:10", False)])
def test_the_canary_mounts_the_model_keys_only_for_an_encrypted_candidate(sealed_store, tmp_path, candidate, mounted):
    written = export(
        "k8s",
        sealed_store["desired"],
        sealed_store["store"],
        tmp_path,
        public_key=sealed_store["pub"],
        model_keys=sealed_store["keyring"],
        host=HOST,
        canary=candidate,
    )
    docs = _load(written)
    assert "secret.yaml" in docs

    def mounts_keys(deployment):
        pod = deployment["spec"]["template"]["spec"]
        return any(v["name"] == "model-keys" for v in pod["volumes"]) and any(
            m["name"] == "model-keys" for m in pod["containers"][0]["volumeMounts"]
        )

    assert mounts_keys(docs["deployment.yaml"])
    assert mounts_keys(docs["deployment-canary.yaml"]) is mounted
