"""The path to many machines: export a deployment for Kubernetes or KServe.

`torchship export k8s|kserve --deploy deploy.yaml --out DIR` checks every name (the export's
`--name`, and each model and version of the file) with the one name rule of `archiver.names`,
verifies every archive the file lists and copies it (with its signature) into
`DIR/model-store/model-store/`, writes the cluster's TorchServe config into
`DIR/model-store/config/config.properties` (the layout KServe's TorchServe runtime expects under
a storageUri), and writes the manifests:

- k8s:    `DIR/k8s/`: ConfigMap, Deployment (TorchServe container, config from the ConfigMap,
          archives from a volume, readiness/liveness on /ping, resources), Service,
          HorizontalPodAutoscaler and NetworkPolicy.
- kserve: `DIR/kserve/`: a ServingRuntime that torchship defines (so it keeps working as KServe
          retires its built-in TorchServe runtime) and an InferenceService using it, with
          `canaryTrafficPercent` for rollouts.

Hardening (both targets, as far as each schema allows): the TorchServe container runs non-root
with a read-only root filesystem, no privilege escalation, every capability dropped and the
runtime's default seccomp profile; the pod mounts no service-account token. TorchServe writes
only to two emptyDir volumes, named by explicit settings rather than by defaults:

- `work` at WORK_IN_POD, the container's workingDir: `key_file.json` (TorchServe writes it to its
  working folder when token auth is on), the logs and the config snapshots (`LOG_LOCATION` and
  `METRICS_LOCATION`; snapshots go to `$LOG_LOCATION/config` and are off anyway, `--ncs`);
- `tmp` at TMP_IN_POD, which TMPDIR/TEMP/TMP name: the launcher's pid file (Python's
  `tempfile.gettempdir()`), the frontend's `java.io.tmpdir` (the launcher passes `TEMP` as
  `-Djava.io.tmpdir`), hence the workers' unix sockets (`.ts.sock.<port>`) and the folders the
  archives are unpacked into (`models/<hash>/`), and whatever else writes to /tmp (the JVM's
  perf data).

The config and the archives are mounted read-only.

Encrypted archives (`torchship package --encrypt`: the zip holds `torchship-keys.json`) need the
model key in the pod, and only there: the export then also writes `secret.yaml`, a Secret
(`<name>-model-keys`, type Opaque) whose one key `model-keys.json` is a keyring holding only the
model keys those archives are wrapped under (taken from the project's
`.torchship/keys/model-keys.json` or the keyring named), written mode 0600. The TorchServe
container mounts it read-only at MODEL_KEYS_IN_POD (defaultMode 0400; with the pod's fsGroup the
kubelet makes it 0440, group model-server) and finds it through $TORCHSHIP_MODEL_KEYS, as the
workers of a local server do. The key is in no other manifest, in no ConfigMap, annotation or
image; without encrypted archives nothing of this is written and the manifests are unchanged.
Each encrypted archive's data key is unwrapped with the keyring before anything is written
there, so a wrong or missing key fails the export, not the pod.

Who reaches what: inference (8080) and metrics (8082) bind all interfaces of the pod and
management stays on the pod's loopback. The metrics port answers anyone who reaches it (model
names, versions, the pod's hostname), so in the k8s export the NetworkPolicy is its only way in:
the inference port admits pods of the same namespace labelled `<name>-client: "true"`, the
metrics port admits pods labelled `<name>-metrics: "true"`, in the same namespace or in a
namespace labelled `torchship.io/metrics-scraper: "true"` (a namespace label needs a cluster
admin, a pod label only someone who may create pods). KServe routes traffic through its own
components (Knative's activator and the ingress gateway, in other namespaces), so the kserve
export keeps metrics on the pod's loopback instead and declares only the inference port (Knative
allows one); admission to inference there is the mesh's or ingress's job. Models load from a
snapshot of the desired state (versions, default, workers, batching), so the pod needs no
`apply`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml

from torchship.archiver import archive_path
from torchship.archiver.names import InvalidName, check_name, check_version
from torchship.handlers import torchship_crypto
from torchship.ops.desired import DesiredState
from torchship.sdk.errors import ArchiveError, BadInput, VerificationError

__all__ = [
    "export",
    "cluster_config",
    "check_export_names",
    "client_label",
    "scraper_label",
    "encrypted_archives",
    "IMAGE",
    "SCRAPER_NAMESPACE_LABEL",
    "MODEL_KEYS_IN_POD",
    "MODEL_KEYS_FILE",
]

IMAGE = "pytorch/torchserve:0.12.0-cpu"
HOME_IN_POD = "/home/model-server"
STORE_IN_POD = f"{HOME_IN_POD}/model-store"
CONFIG_IN_POD = f"{HOME_IN_POD}/config"
WORK_IN_POD = f"{HOME_IN_POD}/work"  # emptyDir: workingDir, key file, logs, snapshots
LOGS_IN_POD = f"{WORK_IN_POD}/logs"
TMP_IN_POD = "/tmp"  # emptyDir: TMPDIR/TEMP/TMP (pid file, java.io.tmpdir: sockets, unpacked archives)
KSERVE_ROOT = "/mnt/models"
MODEL_KEYS_IN_POD = "/var/run/torchship/model-keys"  # the Secret's read-only mount (encrypted archives only)
MODEL_KEYS_FILE = "model-keys.json"  # the Secret's key, and the file's name in the mount
INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT = 8080, 8081, 8082
SCRAPER_NAMESPACE_LABEL = "torchship.io/metrics-scraper"
# --name becomes object names, with suffixes up to "-model-store" (the PVC), and label keys.
_K8S_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_K8S_NAME_MAX = 63 - len("-model-store")


def client_label(app: str) -> dict[str, str]:
    """The label a pod needs to reach the inference port of the k8s export named `app`."""
    return {f"{app}-client": "true"}


def scraper_label(app: str) -> dict[str, str]:
    """The label a pod needs to reach the metrics port of the k8s export named `app`."""
    return {f"{app}-metrics": "true"}


def check_export_names(desired: DesiredState, name: str) -> None:
    """Check every name the export takes by the one name rule (InvalidName otherwise).

    These are the models and versions of the desired state, and `name`, which must also be a Kubernetes object
    name (a DNS-1035 label: lower case letters, digits and '-', starting with a letter) short enough for the
    suffixes the export adds.
    """
    check_name(name)
    if len(name) > _K8S_NAME_MAX or not _K8S_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid export name {name!r}: a Kubernetes name is lower case letters, digits and '-', "
            f"starting with a letter and ending with a letter or digit, at most {_K8S_NAME_MAX} "
            f"characters"
        )
    for model, m in desired.models.items():
        check_name(model)
        for version in m.versions:
            check_version(version)
        if m.default is not None:
            check_version(m.default)


def _snapshot(desired: DesiredState) -> str:
    models: dict[str, Any] = {}
    for name, m in desired.models.items():
        models[name] = {
            v: {
                "defaultVersion": v == m.default,
                "marName": archive_path(Path(), name, v).name,
                "minWorkers": m.min_workers,
                "maxWorkers": m.max_workers,
                "batchSize": m.batch_size,
                "maxBatchDelay": m.max_batch_delay_ms,
                "responseTimeout": 120,
            }
            for v in m.versions
        }
    return json.dumps(
        {"name": "startup.cfg", "modelCount": sum(len(v) for v in models.values()), "models": models},
        separators=(",", ":"),
    )


def cluster_config(desired: DesiredState, model_store: str, *, metrics_host: str = "0.0.0.0") -> str:
    """Return the config.properties of TorchServe inside a pod.

    `metrics_host` 127.0.0.1 keeps the metrics listener on the pod's loopback (the kserve export).
    """
    if metrics_host == "0.0.0.0":
        metrics_note = "# metrics answers anyone who reaches it: the export's NetworkPolicy is its only way in."
    else:
        metrics_note = "# metrics stays on the pod's loopback: it answers anyone who reaches it."
    lines = [
        "# Written by `torchship export`. Inside a pod: the Service reaches inference; management stays on",
        "# the pod's loopback; models load from the snapshot below.",
        metrics_note,
        f"# TorchServe writes only under its working folder ({WORK_IN_POD}: key file, logs and snapshots,",
        f"# LOG_LOCATION={LOGS_IN_POD}) and TMPDIR/TEMP ({TMP_IN_POD}: pid file, worker sockets, unpacked",
        "# archives): the pod mounts emptyDir volumes there and its root filesystem is read-only.",
        f"inference_address=http://0.0.0.0:{INFERENCE_PORT}",
        f"management_address=http://127.0.0.1:{MANAGEMENT_PORT}",
        f"metrics_address=http://{metrics_host}:{METRICS_PORT}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"model_store={model_store}",
        f"allowed_urls=file://{model_store}/[^/]+\\\\.mar",
        "install_py_dep_per_model=false",
        "metrics_mode=prometheus",
        "enable_model_api=false",
        # token auth keys live in a file inside the pod that callers outside cannot read: the cluster's
        # own access control (Service, NetworkPolicy, mesh) guards the inference port instead
        "disable_token_authorization=true",
        "load_models=all",
        f"model_snapshot={_snapshot(desired)}",
    ]
    return "\n".join(lines) + "\n"


def _copy_archives(
    desired: DesiredState, store: Path, out_store: Path, public_key: Path | None, allow_unsigned: bool
) -> list[Path]:
    """Copy each archive (and its signature), then verify the COPY: the bytes the cluster gets are
    the bytes that were verified, whatever happens to the store meanwhile. On a refusal, every copy
    made here is removed again."""
    from torchship.archiver import ensure_verified, signature_path

    out_store.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for name, m in desired.models.items():
            for version in m.versions:
                archive = archive_path(store, name, version)
                if not archive.is_file():
                    raise VerificationError(f"{archive.name} failed verification (archive): not found: {archive}")
                copy = out_store / archive.name
                shutil.copyfile(archive, copy)
                written.append(copy)
                if signature_path(archive).exists():
                    shutil.copyfile(signature_path(archive), signature_path(copy))
                    written.append(signature_path(copy))
                ensure_verified(copy, public_key=public_key, allow_unsigned=allow_unsigned)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return [p for p in written if p.suffix == ".mar"]


def encrypted_archives(archives: list[Path]) -> list[Path]:
    """The archives whose weights are encrypted: their zip holds torchship-keys.json."""
    out = []
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            if torchship_crypto.KEYS_MEMBER in zf.namelist():
                out.append(archive)
    return out


def _pod_keyring(encrypted: list[Path], model_keys: Path | None) -> str:
    """The keyring the pod gets: the model keys `encrypted` are wrapped under, and no other, each
    checked to open its archives' data keys (BadInput naming the archive and key otherwise)."""
    names = ", ".join(a.name for a in encrypted)
    if model_keys is None:
        raise BadInput(f"{names}: encrypted, and no model keyring to export with them: name it (--model-key FILE)")
    from torchship.archiver.model_keys import load_keyring

    try:  # never through a link, no duplicate ids or zero keys, no value of it in a message
        ring = load_keyring(model_keys)
    except ArchiveError as exc:
        raise BadInput(f"{names}: encrypted, and {exc}: name the keyring that opens them (--model-key FILE)") from None
    current, keys = ring.current, ring.keys
    needed: dict[str, bytes] = {}
    for archive in encrypted:
        with zipfile.ZipFile(archive) as zf:
            try:
                entries = json.loads(zf.read(torchship_crypto.KEYS_MEMBER))["members"]
                wrapped = [(member, e["key_id"], e["wrapped_key"]) for member, e in sorted(entries.items())]
            except (ValueError, KeyError, TypeError, AttributeError):
                wrapped = []
        if not wrapped:
            raise BadInput(f"{archive.name}: its {torchship_crypto.KEYS_MEMBER} names no wrapped data key")
        for member, kid, blob in wrapped:
            if kid not in keys:
                raise BadInput(
                    f"{archive.name}: {member} is encrypted under model key {kid}, which {model_keys} does not hold"
                )
            try:
                torchship_crypto.unwrap(keys[kid], blob)
            except torchship_crypto.ModelKeyError as exc:
                raise BadInput(f"{archive.name}: {member}: {exc} (model key {kid} of {model_keys})") from None
            needed[kid] = keys[kid]
    return torchship_crypto.keyring_text(current if current in needed else min(needed), needed)


def _secret(app: str, keyring: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{app}-model-keys", "labels": _labels(app)},
        "type": "Opaque",
        "data": {MODEL_KEYS_FILE: base64.b64encode(keyring.encode()).decode()},
    }


def _model_keys_volume(app: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The Secret's volume, its read-only mount in the TorchServe container, and the env entry that
    names the keyring file to the workers."""
    volume = {
        "name": "model-keys",
        "secret": {
            "secretName": f"{app}-model-keys",
            "items": [{"key": MODEL_KEYS_FILE, "path": MODEL_KEYS_FILE}],
            "defaultMode": 0o400,
        },
    }
    mount = {"name": "model-keys", "mountPath": MODEL_KEYS_IN_POD, "readOnly": True}
    env = {"name": torchship_crypto.KEYRING_ENV, "value": f"{MODEL_KEYS_IN_POD}/{MODEL_KEYS_FILE}"}
    return volume, mount, env


def _with_model_keys(container: dict[str, Any], volumes: list[dict[str, Any]], app: str) -> None:
    volume, mount, env = _model_keys_volume(app)
    container["env"].append(env)
    container["volumeMounts"].append(mount)
    volumes.append(volume)


def _labels(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "torchship"}


def _resources(desired: DesiredState) -> dict[str, Any]:
    workers = sum(m.max_workers for m in desired.models.values())
    memory = 512 + 256 * workers  # the frontend ~400 MB, each worker ~250 MB (measured locally)
    return {
        "requests": {"cpu": str(max(1, workers // 2)), "memory": f"{memory}Mi"},
        "limits": {"cpu": str(max(2, workers)), "memory": f"{memory * 2}Mi"},
    }


_RUNTIME_DEFAULT = {"type": "RuntimeDefault"}
_USER = 1000  # model-server in the TorchServe image


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": _USER,
        "runAsGroup": _USER,
        "fsGroup": _USER,
        "seccompProfile": dict(_RUNTIME_DEFAULT),
    }


def _writable_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The emptyDir volumes TorchServe writes to, and their mounts."""
    volumes = [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "work", "mountPath": WORK_IN_POD}, {"name": "tmp", "mountPath": TMP_IN_POD}]
    return volumes, mounts


def _env() -> list[dict[str, str]]:
    return [
        {"name": "TMPDIR", "value": TMP_IN_POD},
        {"name": "TEMP", "value": TMP_IN_POD},
        {"name": "TMP", "value": TMP_IN_POD},
        {"name": "LOG_LOCATION", "value": LOGS_IN_POD},
        {"name": "METRICS_LOCATION", "value": LOGS_IN_POD},
        {"name": "HOME", "value": WORK_IN_POD},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def _container(
    desired: DesiredState,
    image: str,
    args: list[str],
    mounts: list[dict[str, Any]],
    name: str,
    *,
    metrics_port: bool = True,
) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/ping", "port": INFERENCE_PORT}, "periodSeconds": 10, "timeoutSeconds": 5}
    ports = [{"name": "inference", "containerPort": INFERENCE_PORT, "protocol": "TCP"}]
    if metrics_port:
        ports.append({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})
    return {
        "name": name,
        "image": image,
        "args": args,
        "workingDir": WORK_IN_POD,
        "env": _env(),
        "ports": ports,
        "readinessProbe": {**probe, "initialDelaySeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 120, "failureThreshold": 6},
        "resources": _resources(desired),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": _USER,
            "runAsGroup": _USER,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": dict(_RUNTIME_DEFAULT),
        },
    }


def _network_policy(app: str, labels: dict[str, str]) -> dict[str, Any]:
    """Ingress to the pods only from labelled clients (inference) and labelled scrapers (metrics);
    everything else, the metrics port included, is refused."""
    scraper = {"matchLabels": scraper_label(app)}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": app,
            "labels": labels,
            "annotations": {
                "torchship.io/clients": f"pods labelled {app}-client=true in this namespace",
                "torchship.io/scrapers": f"pods labelled {app}-metrics=true in this namespace "
                f"or in namespaces labelled "
                f"{SCRAPER_NAMESPACE_LABEL}=true",
            },
        },
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": client_label(app)}}],
                    "ports": [{"protocol": "TCP", "port": INFERENCE_PORT}],
                },
                {
                    "from": [
                        {"podSelector": scraper},
                        {
                            "namespaceSelector": {"matchLabels": {SCRAPER_NAMESPACE_LABEL: "true"}},
                            "podSelector": scraper,
                        },
                    ],
                    "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                },
            ],
        },
    }


def _k8s(
    desired: DesiredState, app: str, image: str, config: str, max_replicas: int, keyring: str | None
) -> list[dict[str, Any]]:
    labels = _labels(app)
    args = [
        "torchserve",
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        f"{CONFIG_IN_POD}/config.properties",
        "--model-store",
        STORE_IN_POD,
    ]
    writable, writable_mounts = _writable_volumes()
    mounts = [
        {"name": "config", "mountPath": CONFIG_IN_POD, "readOnly": True},
        {"name": "model-store", "mountPath": STORE_IN_POD, "readOnly": True},
        *writable_mounts,
    ]
    container = _container(desired, image, args, mounts, "torchserve")
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{app}-config"}},
        {
            "name": "model-store",
            "persistentVolumeClaim": {"claimName": f"{app}-model-store", "readOnly": True},
        },
        *writable,
    ]
    if keyring is not None:
        _with_model_keys(container, volumes, app)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{app}-config", "labels": labels},
            "data": {"config.properties": config},
        },
        *([_secret(app, keyring)] if keyring is not None else []),
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": app, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "inference", "port": INFERENCE_PORT, "targetPort": "inference", "protocol": "TCP"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                ],
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": app, "labels": labels},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                "minReplicas": 1,
                "maxReplicas": max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                    }
                ],
            },
        },
        _network_policy(app, labels),
    ]


def _kserve(
    desired: DesiredState, app: str, image: str, storage_uri: str, canary: int | None, keyring: str | None
) -> list[dict[str, Any]]:
    runtime = f"{app}-torchserve"
    args = [
        "torchserve",
        "--start",
        "--foreground",
        "--ncs",
        f"--model-store={KSERVE_ROOT}/model-store",
        f"--ts-config={KSERVE_ROOT}/config/config.properties",
    ]
    # KServe mounts the storageUri at /mnt/models itself (read-only for a PVC); the runtime adds the
    # writable emptyDirs. ServingRuntime has no pod securityContext: the InferenceService sets it.
    volumes, writable_mounts = _writable_volumes()
    container = _container(desired, image, args, writable_mounts, "kserve-container", metrics_port=False)
    if keyring is not None:
        _with_model_keys(container, volumes, app)
    serving_runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": runtime, "labels": _labels(app)},
        "spec": {
            "supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": False}],
            "protocolVersions": ["v1", "v2"],
            "containers": [container],
            "volumes": volumes,
        },
    }
    predictor: dict[str, Any] = {
        "model": {
            "modelFormat": {"name": "pytorch"},
            "runtime": runtime,
            "storageUri": storage_uri,
            "protocolVersion": "v2",
        },
        "minReplicas": 1,
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
    }
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    inference_service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": app, "labels": _labels(app)},
        "spec": {"predictor": predictor},
    }
    return [*([_secret(app, keyring)] if keyring is not None else []), serving_runtime, inference_service]


class _PlainDumper(yaml.SafeDumper):
    """Plain YAML: no &anchors/*aliases for objects the manifests share (labels, selectors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


SECRET_FILE = "secret.yaml"


def _ignore_secret(folder: Path) -> Path:
    """A `.gitignore` in the Secret's folder naming it, so that `git add -A` of committed manifests
    leaves the key material out (a line added to one that is there already, when it lacks it)."""
    path = folder / ".gitignore"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if SECRET_FILE not in {line.strip() for line in text.splitlines()}:
        comment = "# the Secret of the model keys that open the encrypted archives: never in git\n"
        path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + comment + SECRET_FILE + "\n")
    return path


def _write_secret(path: Path, doc: dict[str, Any]) -> None:
    """The Secret's manifest, readable by this account only from its first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file keeps its mode through O_CREAT
        f.write(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))


def export(
    target: str,
    desired: DesiredState,
    store: Path,
    out: Path,
    *,
    public_key: Path | None,
    allow_unsigned: bool = False,
    name: str = "torchship",
    image: str = IMAGE,
    max_replicas: int = 4,
    storage_uri: str | None = None,
    canary_percent: int | None = None,
    model_keys: Path | None = None,
) -> dict[str, list[Path]]:
    """Write the model-store layout and the manifests; returns what was written.

    Names, target and options are checked before anything is read or written. `model_keys`: the
    keyring that opens the encrypted archives (read only when there are some); their keys go into
    a Secret manifest, also listed under "secrets", with a `.gitignore` beside it that names it
    (under "ignores"; none without a Secret).
    """
    if target not in ("k8s", "kserve"):
        raise BadInput(f"export target must be k8s or kserve, not {target!r}")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise BadInput("canary percent must be from 0 to 100")
    check_export_names(desired, name)
    out = Path(out)
    layout = out / "model-store"
    archives = _copy_archives(desired, store, layout / "model-store", public_key, allow_unsigned)
    try:
        encrypted = encrypted_archives(archives)
        keyring = _pod_keyring(encrypted, Path(model_keys) if model_keys else None) if encrypted else None
    except BaseException:
        from torchship.archiver import signature_path

        for archive in archives:  # refused: leave no copies, as a failed verification does
            archive.unlink(missing_ok=True)
            signature_path(archive).unlink(missing_ok=True)
        raise
    in_pod_store = STORE_IN_POD if target == "k8s" else f"{KSERVE_ROOT}/model-store"
    config = cluster_config(desired, in_pod_store, metrics_host="0.0.0.0" if target == "k8s" else "127.0.0.1")
    (layout / "config").mkdir(parents=True, exist_ok=True)
    (layout / "config" / "config.properties").write_text(config)
    if target == "k8s":
        docs = _k8s(desired, name, image, config, max_replicas, keyring)
    else:
        docs = _kserve(desired, name, image, storage_uri or f"pvc://{name}-model-store", canary_percent, keyring)
    folder = out / target
    folder.mkdir(parents=True, exist_ok=True)
    manifests, secrets = [], []
    for doc in docs:
        path = folder / f"{doc['kind'].lower()}.yaml"
        if doc["kind"] == "Secret":
            _write_secret(path, doc)
            secrets.append(path)
        else:
            path.write_text(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))
        manifests.append(path)
    ignores = [_ignore_secret(folder)] if secrets else []
    if keyring is None:  # a Secret left by an earlier export: no key material where none is needed
        (folder / SECRET_FILE).unlink(missing_ok=True)
    return {
        "archives": archives,
        "manifests": manifests,
        "config": [layout / "config" / "config.properties"],
        "secrets": secrets,
        "ignores": ignores,
    }
