"""Exported manifests validate against the official schemas, and carry the desired state."""

import base64
import json
import shutil
import stat
import subprocess
import zipfile

import pytest
import yaml

from tests.schema import validate
from torchship import archiver
from torchship.archiver import ArchiveSpec, example_spec, load_keyring
from torchship.archiver.names import InvalidName
from torchship.handlers import torchship_crypto
from torchship.ops.desired import DesiredState, ModelState, parse_desired
from torchship.ops.export import (
    MODEL_KEYS_FILE,
    MODEL_KEYS_IN_POD,
    SCRAPER_NAMESPACE_LABEL,
    cluster_config,
    export,
)
from torchship.sdk.errors import BadInput, VerificationError

pytest.importorskip("kubernetes")


@pytest.fixture(scope="module")
def exported(mlp_run, tmp_path_factory):
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
    desired = parse_desired(
        {
            "models": {
                "mlp": {
                    "versions": ["1.0", "2.0"],
                    "default": "2.0",
                    "batch_size": 8,
                    "max_batch_delay_ms": 10,
                    "workers": {"min": 1, "max": 2},
                },
                "other": {"versions": ["1.0"]},
            }
        }
    )
    out = tmp_path_factory.mktemp("export")
    pub = archiver.public_key_path(keys)
    return {
        "k8s": export("k8s", desired, store, out, public_key=pub),
        "kserve": export("kserve", desired, store, out, public_key=pub, canary_percent=10),
        "out": out,
        "store": store,
        "keys": keys,
        "desired": desired,
    }


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_manifests_validate_against_the_official_schemas(exported, target):
    kinds = []
    for path in exported[target]["manifests"]:
        doc = yaml.safe_load(path.read_text())
        assert validate(doc) == [], path.name
        assert "&id" not in path.read_text(), "plain YAML, no anchors"
        kinds.append(doc["kind"])
    expected = {
        "k8s": ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy"],
        "kserve": ["ServingRuntime", "InferenceService"],
    }[target]
    assert kinds == expected


def test_the_validator_catches_what_kubectl_would_refuse(exported):
    isvc = yaml.safe_load((exported["out"] / "kserve" / "inferenceservice.yaml").read_text())
    isvc["spec"]["predictor"]["canaryTrafficPercentage"] = 10
    assert any("canaryTrafficPercentage: unknown field of V1beta1PredictorSpec" in p for p in validate(isvc))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i", "prots": []}]}},
        },
    }
    assert any("prots: unknown field" in p for p in validate(deployment))
    deployment["spec"]["template"]["spec"]["containers"] = [{"image": "i"}]
    assert any("name" in p for p in validate(deployment))
    deployment["spec"]["template"]["spec"]["containers"] = [
        {"name": "c", "image": "i", "ports": [{"containerPort": "8080"}]}
    ]
    assert any("containerPort: expected int" in p for p in validate(deployment))
    policy = yaml.safe_load((exported["out"] / "k8s" / "networkpolicy.yaml").read_text())
    policy["spec"]["ingress"][0]["form"] = policy["spec"]["ingress"][0].pop("from")
    assert any("form: unknown field of V1NetworkPolicyIngressRule" in p for p in validate(policy))


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
        "mlp-1.0.mar",
        "mlp-1.0.mar.sig",
        "mlp-2.0.mar",
        "mlp-2.0.mar.sig",
        "other-1.0.mar",
        "other-1.0.mar.sig",
    ]
    for archive in (layout / "model-store").glob("*.mar"):  # copies still verify elsewhere
        assert archiver.verify_archive(archive, public_key=archiver.public_key_path(exported["keys"])).ok
    config = (layout / "config" / "config.properties").read_text()
    snapshot = json.loads(
        next(line for line in config.splitlines() if line.startswith("model_snapshot=")).split("=", 1)[1]
    )
    mlp = snapshot["models"]["mlp"]
    assert mlp["2.0"]["defaultVersion"] and not mlp["1.0"]["defaultVersion"]
    assert (
        mlp["1.0"]["batchSize"],
        mlp["1.0"]["maxBatchDelay"],
        mlp["1.0"]["minWorkers"],
        mlp["1.0"]["maxWorkers"],
    ) == (8, 10, 1, 2)
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
        export(
            "k8s",
            parse_desired({"models": {"other": {"versions": ["1.0"]}}}),
            store,
            tmp_path / "out",
            public_key=archiver.public_key_path(exported["keys"]),
        )


def _docs(exported, target):
    return {doc["kind"]: doc for doc in (yaml.safe_load(p.read_text()) for p in exported[target]["manifests"])}


def _pods(exported, target):
    """(pod-level fields, container, volumes, the config the pod runs with) for each target."""
    if target == "k8s":
        docs = _docs(exported, "k8s")
        pod = docs["Deployment"]["spec"]["template"]["spec"]
        return pod, pod["containers"][0], pod["volumes"], docs["ConfigMap"]["data"]["config.properties"]
    docs = _docs(exported, "kserve")
    runtime = docs["ServingRuntime"]["spec"]
    config = (exported["out"] / "model-store" / "config" / "config.properties").read_text()
    return docs["InferenceService"]["spec"]["predictor"], runtime["containers"][0], runtime["volumes"], config


def _under(path, mount):
    return path == mount or path.startswith(mount.rstrip("/") + "/")


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_pod_is_hardened(exported, target):
    pod, container, volumes, _ = _pods(exported, target)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("hostPath" not in v for v in volumes)


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_torchserve_writes_only_to_empty_dirs(exported, target):
    """Every place TorchServe 0.12 writes, named explicitly and backed by a writable emptyDir: the
    working folder (key_file.json goes to user.dir), LOG_LOCATION and METRICS_LOCATION (logs; the
    snapshots go to $LOG_LOCATION/config), TMPDIR (the launcher's pid file), TEMP (passed as
    -Djava.io.tmpdir: worker sockets and unpacked archives); read-only mounts for the rest."""
    pod, container, volumes, config = _pods(exported, target)
    empty = {v["name"] for v in volumes if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty and not m.get("readOnly")]
    assert writable
    env = {e["name"]: e["value"] for e in container["env"]}
    for place in [container["workingDir"]] + [
        env[k] for k in ("TMPDIR", "TEMP", "TMP", "LOG_LOCATION", "METRICS_LOCATION", "HOME")
    ]:
        assert any(_under(place, m) for m in writable), place
    assert env["TMPDIR"] == env["TEMP"] == env["TMP"]
    assert not _under(env["TMPDIR"], container["workingDir"]) and not _under(container["workingDir"], env["TMPDIR"])
    for m in container["volumeMounts"]:  # everything else TorchServe is given is read-only
        if m["name"] not in empty:
            assert m["readOnly"] is True, m
    store = next(line for line in config.splitlines() if line.startswith("model_store=")).split("=", 1)[1]
    assert not any(_under(store, m) for m in writable)
    assert "--ncs" in container["args"] and "--foreground" in container["args"]


def test_k8s_network_policy_admits_only_labelled_clients_and_scrapers(exported):
    docs = _docs(exported, "k8s")
    policy, deployment = docs["NetworkPolicy"], docs["Deployment"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress"]
    assert all(rule.get("from") for rule in spec["ingress"]), "no rule may admit every source"
    assert all(rule.get("ports") for rule in spec["ingress"]), "no rule may admit every port"

    def admitted(pod_labels, namespace_labels=None):
        """The ports a pod with these labels reaches (namespace_labels None: the policy's own
        namespace), by NetworkPolicy semantics: a peer's selectors all match; omitted
        namespaceSelector means the same namespace."""
        ports = set()
        for rule in spec["ingress"]:
            for peer in rule["from"]:
                assert "ipBlock" not in peer
                if "namespaceSelector" in peer:
                    ns_ok = (
                        namespace_labels is not None
                        and peer["namespaceSelector"]["matchLabels"].items() <= namespace_labels.items()
                    )
                    ns_ok = ns_ok or (namespace_labels is None and not peer["namespaceSelector"].get("matchLabels"))
                else:
                    ns_ok = namespace_labels is None
                pod_ok = peer.get("podSelector", {}).get("matchLabels", {}).items() <= pod_labels.items()
                if ns_ok and pod_ok:
                    ports |= {p["port"] for p in rule["ports"]}
        return ports

    assert admitted({}) == set()
    assert admitted({"app": "anything"}) == set()
    assert admitted({"torchship-client": "true"}) == {8080}
    assert admitted({"torchship-metrics": "true"}) == {8082}
    assert admitted({"torchship-client": "true"}, {"kubernetes.io/metadata.name": "other"}) == set()
    assert admitted({"torchship-metrics": "true"}, {"kubernetes.io/metadata.name": "monitoring"}) == set()
    assert admitted({"torchship-metrics": "true"}, {SCRAPER_NAMESPACE_LABEL: "true"}) == {8082}
    assert admitted({}, {SCRAPER_NAMESPACE_LABEL: "true"}) == set()
    # the container's ports are exactly the ones the policy guards
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {8080, 8082}
    config = docs["ConfigMap"]["data"]["config.properties"]
    assert "management_address=http://127.0.0.1:8081" in config  # management: never off the pod


def test_kserve_keeps_metrics_on_the_pods_loopback(exported):
    _, container, _, config = _pods(exported, "kserve")
    assert "metrics_address=http://127.0.0.1:8082" in config
    assert "inference_address=http://0.0.0.0:8080" in config
    assert [p["containerPort"] for p in container["ports"]] == [8080]  # Knative allows one port
    k8s = (exported["out"] / "k8s" / "configmap.yaml").read_text()
    assert "metrics_address=http://0.0.0.0:8082" in k8s


def test_cluster_config_names_the_writable_places():
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0"]}}})
    config = cluster_config(desired, "/home/model-server/model-store")
    assert "LOG_LOCATION=/home/model-server/work/logs" in config and "/tmp" in config


@pytest.mark.parametrize("name", ["../x", "a..b", "Bad_Name", "UPPER", "x" * 60, "-lead", "trail-", "a.b", "", " x"])
def test_export_refuses_a_bad_name_before_writing(exported, tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(InvalidName):
        export(
            "k8s",
            exported["desired"],
            exported["store"],
            out,
            public_key=archiver.public_key_path(exported["keys"]),
            name=name,
        )
    assert not out.exists()


@pytest.mark.parametrize(
    "model,version",
    [
        ("../mlp", "1.0"),
        ("mlp/x", "1.0"),
        (".hidden", "1.0"),
        ("mlp", "../1.0"),
        ("mlp", "1..0"),
        ("mlp", "1.0/x"),
        ("mlp", ""),
    ],
)
def test_export_refuses_bad_model_names_and_versions_before_writing(exported, tmp_path, model, version):
    """Checked by the one rule even when the state was built in code, not parsed from a file."""
    desired = DesiredState({model: ModelState(model, (version,), version)})
    out = tmp_path / "out"
    with pytest.raises(InvalidName):
        export("kserve", desired, exported["store"], out, public_key=archiver.public_key_path(exported["keys"]))
    assert not out.exists()


def test_export_accepts_a_valid_kubernetes_name(exported, tmp_path):
    written = export(
        "k8s",
        exported["desired"],
        exported["store"],
        tmp_path / "out",
        public_key=archiver.public_key_path(exported["keys"]),
        name="fraud-scorer-2",
    )
    policy = yaml.safe_load((tmp_path / "out" / "k8s" / "networkpolicy.yaml").read_text())
    assert validate(policy) == []
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"fraud-scorer-2-client": "true"}}}]
    assert len(written["manifests"]) == 5


# ------------------------------------------------------------------ encrypted archives: the key from a Secret


def _keyring(path, keys, current):
    path.write_text(torchship_crypto.keyring_text(current, keys))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def sealed(mlp_run, exported, tmp_path_factory):
    """mlp 1.0 plain, mlp 2.0 encrypted under model key `used`; the project's keyring also holds
    `unused`, a key no exported archive needs."""
    store, work = tmp_path_factory.mktemp("sealed-store"), tmp_path_factory.mktemp("sealed-work")
    used, unused = torchship_crypto.new_key(), torchship_crypto.new_key()
    for f in exported["store"].glob("mlp-1.0.mar*"):
        (store / f.name).write_bytes(f.read_bytes())
    packed_with = _keyring(work / "packed-with.json", {"mk-used": used}, "mk-used")
    archiver.package(example_spec("mlp", mlp_run, "2.0"), store, exported["keys"], model_key=load_keyring(packed_with))
    keyring = _keyring(work / "model-keys.json", {"mk-used": used, "mk-unused": unused}, "mk-unused")
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0", "2.0"], "default": "2.0"}}})
    out = tmp_path_factory.mktemp("sealed-export")
    pub = archiver.public_key_path(exported["keys"])
    return {
        target: export(target, desired, store, out, public_key=pub, model_keys=keyring, canary_percent=10)
        for target in ("k8s", "kserve")
    } | {
        "out": out,
        "store": store,
        "desired": desired,
        "keyring": keyring,
        "used": used,
        "unused": unused,
        "pub": pub,
    }


def _key_dir(out):
    """The keyring the pod would read, and its Secret's manifest, for `out`'s k8s export."""
    secret = yaml.safe_load((out / "k8s" / "secret.yaml").read_text())
    return secret, base64.b64decode(secret["data"][MODEL_KEYS_FILE])


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_encrypted_archives_bring_a_secret_that_validates(sealed, target):
    kinds = []
    for path in sealed[target]["manifests"]:
        doc = yaml.safe_load(path.read_text())
        assert validate(doc) == [], path.name
        kinds.append(doc["kind"])
    expected = {
        "k8s": ["ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy"],
        "kserve": ["Secret", "ServingRuntime", "InferenceService"],
    }[target]
    assert kinds == expected
    assert sealed[target]["secrets"] == [sealed["out"] / target / "secret.yaml"]
    secret = yaml.safe_load((sealed["out"] / target / "secret.yaml").read_text())
    assert secret["type"] == "Opaque" and secret["metadata"]["name"] == "torchship-model-keys"
    assert list(secret["data"]) == [MODEL_KEYS_FILE] and "stringData" not in secret
    base64.b64decode(secret["data"][MODEL_KEYS_FILE], validate=True)
    broken = {**secret, "data": {MODEL_KEYS_FILE: 7}, "strngData": {}}  # the validator sees this Secret
    assert any("strngData: unknown field of V1Secret" in p for p in validate(broken))
    assert any("expected bytes" in p for p in validate(broken))
    assert "annotations" not in secret["metadata"]


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_the_secret_file_is_readable_by_its_owner_only(sealed, target):
    assert stat.S_IMODE((sealed["out"] / target / "secret.yaml").stat().st_mode) == 0o600


def test_the_secret_holds_only_the_keys_the_archives_need(sealed):
    _, keyring = _key_dir(sealed["out"])
    path = sealed["out"].parent / "pod-keyring.json"
    path.write_bytes(keyring)
    current, keys = torchship_crypto.read_keyring(path)
    assert keys == {"mk-used": sealed["used"]} and current == "mk-used"  # not mk-unused, the project's current
    kserve = yaml.safe_load((sealed["out"] / "kserve" / "secret.yaml").read_text())
    assert base64.b64decode(kserve["data"][MODEL_KEYS_FILE]) == keyring


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_the_pod_mounts_the_secret_read_only_and_names_it_to_the_workers(sealed, target):
    pod, container, volumes, _ = _pods(sealed, target)
    volume = next(v for v in volumes if v["name"] == "model-keys")
    assert volume == {
        "name": "model-keys",
        "secret": {
            "secretName": "torchship-model-keys",
            "items": [{"key": MODEL_KEYS_FILE, "path": MODEL_KEYS_FILE}],
            "defaultMode": 0o400,
        },
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-keys")
    assert mount == {"name": "model-keys", "mountPath": MODEL_KEYS_IN_POD, "readOnly": True}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[torchship_crypto.KEYRING_ENV] == f"{MODEL_KEYS_IN_POD}/{MODEL_KEYS_FILE}"
    assert not any(_under(MODEL_KEYS_IN_POD, m["mountPath"]) for m in container["volumeMounts"] if m is not mount)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # 0400 + fsGroup: readable by it


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_the_encrypted_pod_is_as_hardened_as_the_plain_one(sealed, target):
    test_pod_is_hardened(sealed, target)
    test_torchserve_writes_only_to_empty_dirs(sealed, target)


def test_no_key_bytes_outside_the_secret(sealed):
    _, keyring = _key_dir(sealed["out"])
    model_key = sealed["used"]
    needles = [
        model_key,
        base64.b64encode(model_key),
        model_key.hex().encode(),
        keyring,
        base64.b64encode(keyring),
        sealed["unused"],
        base64.b64encode(sealed["unused"]),
    ]
    files = [p for p in sealed["out"].rglob("*") if p.is_file()]
    secrets = {sealed["out"] / t / "secret.yaml" for t in ("k8s", "kserve")}
    assert secrets <= set(files) and len(files) > len(secrets) + 5
    for path in files:
        data = path.read_bytes()
        if path in secrets:
            assert base64.b64encode(sealed["unused"]) not in data and sealed["unused"] not in data
            continue
        for needle in needles:
            assert needle not in data, path
    for path in sealed["out"].rglob("*.mar"):  # what went to the cluster's volume: the weights sealed
        with zipfile.ZipFile(path) as zf:
            assert (torchship_crypto.KEYS_MEMBER in zf.namelist()) == (path.name == "mlp-2.0.mar")
            assert not (path.name == "mlp-2.0.mar" and "model.safetensors" in zf.namelist())


def test_without_encrypted_archives_nothing_changes(exported, sealed, tmp_path):
    """The plain export names no key, needs no keyring, and removes a Secret an earlier export of
    encrypted archives left in the same folder: the manifests are those of an export without it."""
    for target in ("k8s", "kserve"):
        assert exported[target]["secrets"] == []
        for path in exported[target]["manifests"]:
            text = path.read_text()
            assert "model-keys" not in text and torchship_crypto.KEYRING_ENV not in text and "Secret" not in text
    out = tmp_path / "out"
    shutil.copytree(sealed["out"], out)
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0"]}}})
    for target in ("k8s", "kserve"):
        written = export(target, desired, sealed["store"], out, public_key=sealed["pub"], model_keys=None)
        assert not (out / target / "secret.yaml").exists() and written["secrets"] == []
        again = tmp_path / f"fresh-{target}"
        export(target, desired, sealed["store"], again, public_key=sealed["pub"])
        for path in written["manifests"]:
            assert path.read_bytes() == (again / target / path.name).read_bytes()


@pytest.mark.parametrize(
    "keyring,match",
    [
        (None, "encrypted, and no model keyring to export with them: name it \\(--model-key FILE\\)"),
        ("missing", "no model keyring at"),
        (
            "other-id",
            "mlp-2.0.mar: model.safetensors.tsenc is encrypted under model key mk-used, which .* does not hold",
        ),
        ("wrong-key", "mlp-2.0.mar: model.safetensors.tsenc: the model key does not open"),
    ],
)
def test_a_keyring_that_cannot_open_the_archives_fails_the_export_before_writing(sealed, tmp_path, keyring, match):
    path = tmp_path / "model-keys.json"
    if keyring == "other-id":
        _keyring(path, {"mk-other": sealed["used"]}, "mk-other")
    elif keyring == "wrong-key":
        _keyring(path, {"mk-used": torchship_crypto.new_key()}, "mk-used")
    out = tmp_path / "out"
    with pytest.raises(BadInput, match=match):
        export(
            "k8s",
            sealed["desired"],
            sealed["store"],
            out,
            public_key=sealed["pub"],
            model_keys=None if keyring is None else path,
        )
    assert not [p for p in out.rglob("*") if p.is_file()], "a refused export leaves no copies and no manifests"


def test_the_cli_exports_the_projects_model_key_and_says_what_the_secret_holds(sealed, tmp_path, monkeypatch, capsys):
    from torchship.cli import main

    project = tmp_path / "project"
    shutil.copytree(sealed["store"], project / "model_store")
    shutil.copytree(sealed["pub"].parent, project / ".torchship" / "keys")
    shutil.copyfile(sealed["keyring"], project / ".torchship" / "keys" / MODEL_KEYS_FILE)
    (project / ".torchship" / "keys" / MODEL_KEYS_FILE).chmod(0o600)  # as the project makes it (load_keyring's rule)
    (project / "deploy.yaml").write_text('models:\n  mlp:\n    versions: ["1.0", "2.0"]\n    default: "2.0"\n')
    monkeypatch.chdir(project)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)

    assert main(["export", "k8s", "--out", "out"]) == 0
    said = capsys.readouterr().out
    secret = project / "out" / "k8s" / "secret.yaml"
    assert f"wrote {secret.relative_to(project)} (mode 0600)" in said
    assert "holds key material" in said and "Never commit it" in said
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert _key_dir(project / "out")[1] == _key_dir(sealed["out"])[1]

    other = tmp_path / "other-keys.json"
    _keyring(other, {"mk-other": torchship_crypto.new_key()}, "mk-other")
    assert main(["export", "kserve", "--out", "out2", "--model-key", str(other)]) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "encrypted under model key mk-used, which" in err and str(other) in err
    assert not (project / "out2" / "kserve").exists()
    ignore = project / "out" / "k8s" / ".gitignore"
    assert f"wrote {ignore.relative_to(project)} (keeps secret.yaml out of git)" in said


@pytest.mark.parametrize("target", ["k8s", "kserve"])
def test_the_secret_is_kept_out_of_git_and_a_plain_export_writes_no_gitignore(exported, sealed, target, tmp_path):
    ignore = sealed["out"] / target / ".gitignore"
    assert sealed[target]["ignores"] == [ignore]
    assert "secret.yaml" in ignore.read_text().splitlines()
    assert not (exported["out"] / target / ".gitignore").exists() and exported[target]["ignores"] == []
    if shutil.which("git"):
        repo = tmp_path / "repo"
        shutil.copytree(sealed["out"], repo)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        r = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", f"{target}/secret.yaml"], check=False)
        assert r.returncode == 0, "git ignores the Secret"
        r = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", f"{target}/deployment.yaml"], check=False)
        assert r.returncode == 1, "and only the Secret"


def test_an_existing_gitignore_gets_the_secret_once_and_keeps_its_lines(sealed, tmp_path):
    out = tmp_path / "out"
    (out / "k8s").mkdir(parents=True)
    (out / "k8s" / ".gitignore").write_text("notes.txt")  # no newline at its end
    for _ in range(2):
        export("k8s", sealed["desired"], sealed["store"], out, public_key=sealed["pub"], model_keys=sealed["keyring"])
    lines = (out / "k8s" / ".gitignore").read_text().splitlines()
    assert lines[0] == "notes.txt" and lines.count("secret.yaml") == 1
