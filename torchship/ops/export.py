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

The cluster's edge (k8s, with `host`): an ingress-nginx Ingress (`ingress.yaml`) serves the inference
API on `host` with TLS (`tls:` naming the Secret `tls_secret`, default `<name>-tls`, which the export
does not write: cert-manager or `kubectl create secret tls` makes it) and exposes only GET /ping and,
per model, /predictions/NAME[/VERSION] and /v2/models/NAME/infer; its body limit is TorchServe's
max_request_size (the local gateway's), the body stays in the controller's memory, and its read
timeout covers TorchServe's response timeout. ingress-nginx speaks plain HTTP to the pod
(backend-protocol HTTP: TLS ends at the controller) and the NetworkPolicy admits the controller's pods
(namespace `ingress_namespace`, default ingress-nginx) to the inference port.

A live rollout in the cluster (`canary="MODEL:VERSION:PCT"`, `shadow="MODEL:VERSION"`, one candidate)
follows what ingress-nginx can do: its canary routes between Services, not versions, and attaches
to the primary Service of the matched path (every path of that Service gets it), and its mirror
applies to every path of the Ingress that carries it. So the export writes a second TorchServe
(`<name>-canary`: ConfigMap whose snapshot loads only MODEL, every listed version, VERSION the
default; Deployment, Service, HPA, NetworkPolicy), moves MODEL's paths into their own Ingress
(`<name>-rollout`, same host and TLS) whose backend is a Service of their own (`<name>-stable`, the
same pods as `<name>`) so that the canary reaches MODEL's traffic only, and adds:

- canary: `ingress-canary.yaml`, an Ingress marked canary on the same host and paths, backend
  `<name>-canary`, `canary-weight` PCT (a random share of requests) and `canary-by-header`
  X-Torchship-Canary (`always` / `never` pin a caller);
- shadow: `mirror-target` on `<name>-rollout`, the canary Service's cluster DNS name (which needs
  `namespace`): ingress-nginx mirrors every request of MODEL's paths and discards the answers.

Files of an earlier export that this one no longer writes (a finished rollout's) are removed.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from torchship.archiver import archive_path
from torchship.archiver.names import InvalidName, check_name, check_version
from torchship.handlers import torchship_crypto
from torchship.ops.desired import DesiredState
from torchship.sdk.config import DEFAULT_MAX_REQUEST_SIZE
from torchship.sdk.errors import ArchiveError, BadInput, VerificationError

__all__ = [
    "export",
    "cluster_config",
    "check_export_names",
    "client_label",
    "scraper_label",
    "encrypted_archives",
    "Rollout",
    "rollout_of",
    "IMAGE",
    "CANARY_HEADER",
    "INGRESS_CLASS",
    "INGRESS_NAMESPACE",
    "MAX_REQUEST_SIZE",
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
RESPONSE_TIMEOUT_S = 120  # each model's responseTimeout in the snapshot
# TorchServe's max_request_size, set in the pod's config: the local gateway's body limit too (every
# handler's own max_body_bytes is below it), and the Ingress's proxy-body-size
MAX_REQUEST_SIZE = DEFAULT_MAX_REQUEST_SIZE
INGRESS_CLASS = "nginx"  # the IngressClass ingress-nginx's own manifests and chart create
INGRESS_NAMESPACE = "ingress-nginx"  # where those install the controller
_CONTROLLER_LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
CANARY_HEADER = "X-Torchship-Canary"  # `always` / `never`: a caller pins itself to the candidate or away
CLUSTER_DOMAIN = "cluster.local"  # the mirror target is a fully qualified Service name (nginx's resolver)
_NGINX = "nginx.ingress.kubernetes.io/"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
# the files of the k8s export that only some exports write: one an earlier export left is removed
_OPTIONAL_K8S_FILES = (
    "ingress.yaml",
    "ingress-rollout.yaml",
    "ingress-canary.yaml",
    "service-stable.yaml",
    "configmap-canary.yaml",
    "deployment-canary.yaml",
    "service-canary.yaml",
    "horizontalpodautoscaler-canary.yaml",
    "networkpolicy-canary.yaml",
)
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


@dataclass(frozen=True)
class Rollout:
    """The version on trial in the cluster: `model`'s `version`.

    A canary Ingress gives it `weight` percent of the model's requests (None: no canary), and with
    `shadow` a copy of every request of the model is mirrored to it.
    """

    model: str
    version: str
    weight: int | None = None
    shadow: bool = False


def _candidate(option: str, parts: list[str], form: str, desired: DesiredState) -> tuple[str, str]:
    model, version = parts[0].strip(), parts[1].strip()
    if not model or not version:
        raise BadInput(f"{option} takes {form}: name the model and the version, e.g. mlp:2.0")
    if model not in desired.models:
        raise BadInput(f"{option}: no model {model!r} in the desired state (models: {', '.join(desired.models)})")
    m = desired.models[model]
    if version not in m.versions:
        raise BadInput(
            f"{option}: {version} is not among {model}'s versions in the desired state ({', '.join(m.versions)}): "
            "list it there, so its archive is exported"
        )
    if version == m.default:
        raise BadInput(f"{option}: {version} is already {model}'s default: the candidate is another version")
    return model, version


def rollout_of(desired: DesiredState, canary: str | None, shadow: str | None) -> Rollout | None:
    """Return the rollout that `canary` ("MODEL:VERSION:PCT") and `shadow` ("MODEL:VERSION") name, or None.

    Both are checked against the desired state: BadInput (one line) for a model it lacks, a version it
    does not list, the model's default, a percent outside 0-100, or two different candidates.
    """
    if canary is None and shadow is None:
        return None
    weight = None
    candidates = []
    if canary is not None:
        parts = canary.split(":")
        if len(parts) != 3:
            raise BadInput(f"--canary takes MODEL:VERSION:PERCENT (e.g. mlp:2.0:10), not {canary!r}")
        candidates.append(_candidate("--canary", parts, "MODEL:VERSION:PERCENT", desired))
        pct = parts[2].strip()
        if not re.fullmatch(r"[0-9]{1,3}", pct) or not 0 <= int(pct) <= 100:
            raise BadInput(f"--canary: the percent is a whole number from 0 to 100, not {parts[2]!r}")
        weight = int(pct)
    if shadow is not None:
        parts = shadow.split(":")
        if len(parts) == 3:
            raise BadInput(
                "--shadow takes MODEL:VERSION, no percent: ingress-nginx's mirror copies every request "
                "of the model's paths (it has no sampling)"
            )
        if len(parts) != 2:
            raise BadInput(f"--shadow takes MODEL:VERSION (e.g. mlp:2.0), not {shadow!r}")
        candidates.append(_candidate("--shadow", parts, "MODEL:VERSION", desired))
    if len(set(candidates)) > 1:
        (m1, v1), (m2, v2) = candidates
        raise BadInput(
            f"--canary and --shadow name one candidate (the canary Service is the mirror's target): "
            f"{m1} {v1} and {m2} {v2} differ"
        )
    model, version = candidates[0]
    return Rollout(model, version, weight, shadow is not None)


def _check_dns(option: str, value: str, *, label: bool) -> None:
    limit = 63 if label else 253
    ok = _K8S_NAME.fullmatch(value) if label else _DNS_SUBDOMAIN.fullmatch(value)
    if not ok or len(value) > limit:
        kind = "a DNS label" if label else "a DNS name"
        raise BadInput(
            f"{option}: {value!r} is not {kind} (lower case letters, digits"
            f"{'' if label else ', dots'} and '-', at most {limit} characters)"
        )


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise BadInput(f"--host: {host!r} is an IP address: an Ingress host is a DNS name")
    _check_dns("--host", host[2:] if host.startswith("*.") else host, label=False)


@dataclass(frozen=True)
class _Edge:
    """The k8s export's Ingress: its host, TLS Secret, the controller's namespace, and the rollout."""

    host: str
    tls_secret: str
    ingress_namespace: str
    rollout: Rollout | None


def _edge(
    target: str,
    desired: DesiredState,
    name: str,
    host: str | None,
    tls_secret: str | None,
    namespace: str | None,
    ingress_namespace: str | None,
    canary: str | None,
    shadow: str | None,
) -> _Edge | None:
    """The Ingress the options ask for (None: none), every option checked (BadInput, one line)."""
    given = {
        "--host": host,
        "--tls-secret": tls_secret,
        "--namespace": namespace,
        "--ingress-namespace": ingress_namespace,
        "--canary": canary,
        "--shadow": shadow,
    }
    given = {option: value for option, value in given.items() if value is not None}
    if target != "k8s" and given:
        raise BadInput(f"{', '.join(given)}: for the k8s export only (KServe routes traffic through its own ingress)")
    if namespace is not None:
        _check_dns("--namespace", namespace, label=True)
    if host is None:
        needs = [option for option in given if option != "--namespace"]
        if needs:
            verb = "needs" if len(needs) == 1 else "need"
            raise BadInput(f"{', '.join(needs)} {verb} --host HOST: the Ingress serves a host name, with its TLS")
        return None
    _check_host(host)
    if tls_secret is not None:
        _check_dns("--tls-secret", tls_secret, label=False)
    if ingress_namespace is not None:
        _check_dns("--ingress-namespace", ingress_namespace, label=True)
    rollout = rollout_of(desired, canary, shadow)
    if rollout is not None and rollout.shadow and namespace is None:
        raise BadInput(
            "--shadow needs --namespace NS: the mirror target is the canary Service's cluster DNS name "
            f"(NAME-canary.NS.svc.{CLUSTER_DOMAIN}), which ingress-nginx resolves from its own namespace"
        )
    return _Edge(host, tls_secret or f"{name}-tls", ingress_namespace or INGRESS_NAMESPACE, rollout)


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
                "responseTimeout": RESPONSE_TIMEOUT_S,
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
        # the body limit, named rather than left to the default: an Ingress in front sets the same one
        f"max_request_size={MAX_REQUEST_SIZE}",
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


def _network_policy(
    app: str, labels: dict[str, str], *, name: str | None = None, ingress_namespace: str | None = None
) -> dict[str, Any]:
    """Ingress to the pods selected by `labels` only from `app`'s labelled clients (inference) and labelled
    scrapers (metrics), and, with `ingress_namespace`, from the ingress-nginx controller's pods there
    (inference); everything else, the metrics port included, is refused."""
    scraper = {"matchLabels": scraper_label(app)}
    annotations = {
        "torchship.io/clients": f"pods labelled {app}-client=true in this namespace",
        "torchship.io/scrapers": f"pods labelled {app}-metrics=true in this namespace "
        f"or in namespaces labelled "
        f"{SCRAPER_NAMESPACE_LABEL}=true",
    }
    rules: list[dict[str, Any]] = [
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
    ]
    if ingress_namespace is not None:
        annotations["torchship.io/ingress"] = f"the ingress-nginx controller's pods in namespace {ingress_namespace}"
        rules.append(
            {
                "from": [
                    {
                        # kubernetes.io/metadata.name: the label every namespace has (Kubernetes 1.21+)
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ingress_namespace}},
                        "podSelector": {"matchLabels": dict(_CONTROLLER_LABELS)},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": INFERENCE_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name or app, "labels": labels, "annotations": annotations},
        "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def _configmap(name: str, labels: dict[str, str], config: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"config.properties": config},
    }


def _deployment(
    name: str, labels: dict[str, str], desired: DesiredState, image: str, config_map: str, app: str, keyring: bool
) -> dict[str, Any]:
    """A TorchServe Deployment with the config of `config_map` and `app`'s archives (and model keys)."""
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
        {"name": "config", "configMap": {"name": config_map}},
        {
            "name": "model-store",
            "persistentVolumeClaim": {"claimName": f"{app}-model-store", "readOnly": True},
        },
        *writable,
    ]
    if keyring:
        _with_model_keys(container, volumes, app)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
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


def _service(name: str, labels: dict[str, str], selector: dict[str, str], *, metrics: bool = True) -> dict[str, Any]:
    ports = [{"name": "inference", "port": INFERENCE_PORT, "targetPort": "inference", "protocol": "TCP"}]
    if metrics:
        ports.append({"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": selector, "ports": ports},
    }


def _hpa(name: str, labels: dict[str, str], max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }


def _paths(models: list[str], service: str, *, ping: bool) -> list[dict[str, Any]]:
    """The inference routes of `models` (and /ping), all to `service`'s inference port: Prefix
    /predictions/NAME covers /predictions/NAME and /predictions/NAME/VERSION, nothing else."""
    routes = [("/ping", "Exact")] if ping else []
    for model in models:
        routes += [(f"/predictions/{model}", "Prefix"), (f"/v2/models/{model}/infer", "Exact")]
    backend = {"service": {"name": service, "port": {"number": INFERENCE_PORT}}}
    return [{"path": path, "pathType": kind, "backend": backend} for path, kind in routes]


def _edge_annotations() -> dict[str, str]:
    """What the local gateway bounds, as ingress-nginx annotations (all strings)."""
    return {
        # TLS ends at the controller; TorchServe in the pod speaks plain HTTP (the NetworkPolicy guards the hop)
        f"{_NGINX}backend-protocol": "HTTP",
        # TorchServe's max_request_size, as the gateway: a larger body is 413 at the edge
        f"{_NGINX}proxy-body-size": str(MAX_REQUEST_SIZE),
        # a buffer as large as the limit: request bodies stay in memory, never in the controller's temp files
        f"{_NGINX}client-body-buffer-size": str(MAX_REQUEST_SIZE),
        # TorchServe's response timeout, and some (ingress-nginx's default is 60 s)
        f"{_NGINX}proxy-read-timeout": str(RESPONSE_TIMEOUT_S + 10),
    }


def _ingress(
    name: str, labels: dict[str, str], edge: _Edge, paths: list[dict[str, Any]], annotations: dict[str, str]
) -> dict[str, Any]:
    spec: dict[str, Any] = {"ingressClassName": INGRESS_CLASS}
    if not annotations.get(f"{_NGINX}canary"):
        # a canary Ingress takes its host's TLS from the main one (ingress-nginx skips it when it builds servers)
        spec["tls"] = [{"hosts": [edge.host], "secretName": edge.tls_secret}]
    spec["rules"] = [{"host": edge.host, "http": {"paths": paths}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def _canary_state(desired: DesiredState, rollout: Rollout) -> DesiredState:
    """The canary pod's desired state: only the candidate's model, every listed version (a request naming
    one gets it), the candidate the default."""
    return DesiredState({rollout.model: replace(desired.models[rollout.model], default=rollout.version)})


def _edge_docs(
    desired: DesiredState,
    app: str,
    image: str,
    max_replicas: int,
    sealed: set[str],
    edge: _Edge,
    namespace: str | None,
) -> list[tuple[str, dict[str, Any]]]:
    """The Ingresses, and with a rollout the canary's TorchServe, as (file stem, manifest).

    The canary pods mount the model keys only when the candidate's model has encrypted archives
    (`sealed`: their file names).
    """
    labels = _labels(app)
    rollout = edge.rollout
    others = [m for m in desired.models if rollout is None or m != rollout.model]
    docs: list[tuple[str, dict[str, Any]]] = []
    ingresses = [("ingress", _ingress(app, labels, edge, _paths(others, app, ping=True), _edge_annotations()))]
    if rollout is not None:
        canary, stable = f"{app}-canary", f"{app}-stable"
        canary_labels = _labels(canary)
        # the canary attaches to the primary Service of the matched paths, and to every path of that
        # Service: the rolled-out model's paths get a Service of their own (the same pods)
        primary = stable if rollout.weight is not None else app
        if rollout.weight is not None:
            docs.append(("service-stable", _service(stable, labels, labels, metrics=False)))
        canary_desired = _canary_state(desired, rollout)
        versions = canary_desired.models[rollout.model].versions
        keyring = any(archive_path(Path(), rollout.model, v).name in sealed for v in versions)
        docs += [
            (
                "configmap-canary",
                _configmap(f"{canary}-config", canary_labels, cluster_config(canary_desired, STORE_IN_POD)),
            ),
            (
                "deployment-canary",
                _deployment(canary, canary_labels, canary_desired, image, f"{canary}-config", app, keyring),
            ),
            ("service-canary", _service(canary, canary_labels, canary_labels)),
            ("horizontalpodautoscaler-canary", _hpa(canary, canary_labels, max_replicas)),
            (
                "networkpolicy-canary",
                _network_policy(app, canary_labels, name=canary, ingress_namespace=edge.ingress_namespace),
            ),
        ]
        annotations = _edge_annotations()
        if rollout.shadow:
            annotations[f"{_NGINX}mirror-target"] = (
                f"http://{canary}.{namespace}.svc.{CLUSTER_DOMAIN}:{INFERENCE_PORT}$request_uri"
            )
            annotations[f"{_NGINX}mirror-request-body"] = "on"
        paths = _paths([rollout.model], primary, ping=False)
        ingresses.append(("ingress-rollout", _ingress(f"{app}-rollout", labels, edge, paths, annotations)))
        if rollout.weight is not None:
            canary_annotations = {
                f"{_NGINX}canary": "true",
                f"{_NGINX}canary-weight": str(rollout.weight),
                f"{_NGINX}canary-by-header": CANARY_HEADER,
            }
            paths = _paths([rollout.model], canary, ping=False)
            ingresses.append(("ingress-canary", _ingress(canary, canary_labels, edge, paths, canary_annotations)))
    return docs + ingresses


def _k8s(
    desired: DesiredState,
    app: str,
    image: str,
    config: str,
    max_replicas: int,
    keyring: str | None,
    edge: _Edge | None = None,
    namespace: str | None = None,
    sealed: set[str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The k8s manifests as (file stem, manifest), in the order they are listed; `sealed`: the file
    names of the encrypted archives."""
    labels = _labels(app)
    docs: list[tuple[str, dict[str, Any]]] = [
        ("configmap", _configmap(f"{app}-config", labels, config)),
        *([("secret", _secret(app, keyring))] if keyring is not None else []),
        ("deployment", _deployment(app, labels, desired, image, f"{app}-config", app, keyring is not None)),
        ("service", _service(app, labels, labels)),
        ("horizontalpodautoscaler", _hpa(app, labels, max_replicas)),
        (
            "networkpolicy",
            _network_policy(app, labels, ingress_namespace=edge.ingress_namespace if edge is not None else None),
        ),
    ]
    if edge is not None:
        docs += _edge_docs(desired, app, image, max_replicas, sealed or set(), edge, namespace)
    if namespace is not None:
        for _, doc in docs:
            meta = doc["metadata"]
            doc["metadata"] = {"name": meta.pop("name"), "namespace": namespace, **meta}
    return docs


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
    host: str | None = None,
    tls_secret: str | None = None,
    namespace: str | None = None,
    ingress_namespace: str | None = None,
    canary: str | None = None,
    shadow: str | None = None,
) -> dict[str, list[Path]]:
    """Write the model-store layout and the manifests; returns what was written.

    Names, target and options are checked before anything is read or written. `model_keys`: the
    keyring that opens the encrypted archives (read only when there are some); their keys go into
    a Secret manifest, also listed under "secrets", with a `.gitignore` beside it that names it
    (under "ignores"; none without a Secret).

    k8s only: `host` adds the ingress-nginx Ingress (TLS from the Secret `tls_secret`, default
    `<name>-tls`; the controller's pods in `ingress_namespace`, default ingress-nginx, admitted by the
    NetworkPolicy); `canary` ("MODEL:VERSION:PCT") and `shadow` ("MODEL:VERSION") a live rollout of
    one candidate (see the module's docstring); `namespace` is written into every manifest (the mirror
    target needs it). Files an earlier export wrote and this one does not are removed ("removed").
    """
    if target not in ("k8s", "kserve"):
        raise BadInput(f"export target must be k8s or kserve, not {target!r}")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise BadInput("canary percent must be from 0 to 100")
    check_export_names(desired, name)
    edge = _edge(target, desired, name, host, tls_secret, namespace, ingress_namespace, canary, shadow)
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
        sealed = {archive.name for archive in encrypted}
        docs = _k8s(desired, name, image, config, max_replicas, keyring, edge, namespace, sealed)
    else:
        kserve = _kserve(desired, name, image, storage_uri or f"pvc://{name}-model-store", canary_percent, keyring)
        docs = [(doc["kind"].lower(), doc) for doc in kserve]
    folder = out / target
    folder.mkdir(parents=True, exist_ok=True)
    manifests, secrets = [], []
    for stem, doc in docs:
        path = folder / f"{stem}.yaml"
        if doc["kind"] == "Secret":
            _write_secret(path, doc)
            secrets.append(path)
        else:
            path.write_text(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))
        manifests.append(path)
    ignores = [_ignore_secret(folder)] if secrets else []
    if keyring is None:  # a Secret left by an earlier export: no key material where none is needed
        (folder / SECRET_FILE).unlink(missing_ok=True)
    removed = []
    if target == "k8s":  # an Ingress or a finished rollout's canary of an earlier export: not applied again
        for file_name in _OPTIONAL_K8S_FILES:
            stale = folder / file_name
            if stale not in manifests and stale.is_file():
                stale.unlink()
                removed.append(stale)
    return {
        "archives": archives,
        "manifests": manifests,
        "config": [layout / "config" / "config.properties"],
        "secrets": secrets,
        "ignores": ignores,
        "removed": removed,
    }
