"""Exported manifests validate against the official schemas, and carry the desired state."""

import json

import pytest
import yaml

import archiver
from archiver import ArchiveSpec, example_spec
from tests.schema import validate
from torchship.desired import parse_desired
from torchship.errors import VerificationError
from torchship.export import export

pytest.importorskip("kubernetes")


@pytest.fixture(scope="module")
def exported(mlp_run, tmp_path_factory):
    store, keys = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("keys")
    spec = example_spec("mlp", mlp_run, "1.0")
    for name, v in (("mlp", "1.0"), ("mlp", "2.0"), ("other", "1.0")):
        archiver.package(ArchiveSpec(name, v, spec.handler, spec.weights, extra_files=spec.extra_files,
                                     model_config=spec.model_config), store, keys)
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0", "2.0"], "default": "2.0", "batch_size": 8,
                                                "max_batch_delay_ms": 10, "workers": {"min": 1, "max": 2}},
                                        "other": {"versions": ["1.0"]}}})
    out = tmp_path_factory.mktemp("export")
    pub = archiver.public_key_path(keys)
    return {"k8s": export("k8s", desired, store, out, public_key=pub),
            "kserve": export("kserve", desired, store, out, public_key=pub, canary_percent=10),
            "out": out, "store": store, "keys": keys, "desired": desired}


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_manifests_validate_against_the_official_schemas(exported, target):
    kinds = []
    for path in exported[target]["manifests"]:
        doc = yaml.safe_load(path.read_text())
        assert validate(doc) == [], path.name
        kinds.append(doc["kind"])
    expected = {"k8s": ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"],
                "kserve": ["ServingRuntime", "InferenceService"]}[target]
    assert kinds == expected


def test_the_validator_catches_what_kubectl_would_refuse(exported):
    isvc = yaml.safe_load((exported["out"] / "kserve" / "inferenceservice.yaml").read_text())
    isvc["spec"]["predictor"]["canaryTrafficPercentage"] = 10
    assert any("canaryTrafficPercentage: unknown field of V1beta1PredictorSpec" in p for p in validate(isvc))
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"spec": {"containers": [{"name": "c", "image": "i", "prots": []}]}}}}
    assert any("prots: unknown field" in p for p in validate(deployment))
    deployment["spec"]["template"]["spec"]["containers"] = [{"image": "i"}]
    assert any("name" in p for p in validate(deployment))
    deployment["spec"]["template"]["spec"]["containers"] = [{"name": "c", "image": "i", "ports": [
        {"containerPort": "8080"}]}]
    assert any("containerPort: expected int" in p for p in validate(deployment))


def test_k8s_deployment_is_safe_and_probed(exported):
    docs = {yaml.safe_load(p.read_text())["kind"]: yaml.safe_load(p.read_text()) for p in exported["k8s"]["manifests"]}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert container["securityContext"]["runAsNonRoot"] and not container["securityContext"]["allowPrivilegeEscalation"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert {v["name"] for v in pod["volumes"]} >= {"config", "model-store"}
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    config = docs["ConfigMap"]["data"]["config.properties"]
    assert "management_address=http://127.0.0.1:8081" in config and "enable_model_api=false" in config


def test_model_store_layout_and_snapshot_carry_the_desired_state(exported):
    layout = exported["out"] / "model-store"
    assert sorted(p.name for p in (layout / "model-store").iterdir()) == [
        "mlp-1.0.mar", "mlp-1.0.mar.sig", "mlp-2.0.mar", "mlp-2.0.mar.sig", "other-1.0.mar", "other-1.0.mar.sig"]
    for archive in (layout / "model-store").glob("*.mar"):  # copies still verify elsewhere
        assert archiver.verify_archive(archive, public_key=archiver.public_key_path(exported["keys"])).ok
    config = (layout / "config" / "config.properties").read_text()
    snapshot = json.loads(next(line for line in config.splitlines() if line.startswith("model_snapshot="))
                          .split("=", 1)[1])
    mlp = snapshot["models"]["mlp"]
    assert mlp["2.0"]["defaultVersion"] and not mlp["1.0"]["defaultVersion"]
    assert (mlp["1.0"]["batchSize"], mlp["1.0"]["maxBatchDelay"], mlp["1.0"]["minWorkers"], mlp["1.0"]["maxWorkers"]) \
        == (8, 10, 1, 2)
    isvc = yaml.safe_load((exported["out"] / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "torchship-torchserve"


def test_export_refuses_unverified_archives(exported, tmp_path):
    from tests.fixtures import tamper

    store = tmp_path / "store"
    store.mkdir()
    for f in exported["store"].glob("other-1.0.mar*"):
        (store / f.name).write_bytes(f.read_bytes())
    tamper.rewrite(store / "other-1.0.mar", lambda m: {**m, "evil.py": b"x"})
    with pytest.raises(VerificationError, match="other-1.0.mar failed verification"):
        export("k8s", parse_desired({"models": {"other": {"versions": ["1.0"]}}}), store, tmp_path / "out",
               public_key=archiver.public_key_path(exported["keys"]))
