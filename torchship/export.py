"""The path to many machines: export a deployment for Kubernetes or KServe.

`torchship export k8s|kserve --deploy deploy.yaml --out DIR` verifies every archive the file lists
and copies it (with its signature) into `DIR/model-store/model-store/`, writes the cluster's
TorchServe config into `DIR/model-store/config/config.properties` (the layout KServe's TorchServe
runtime expects under a storageUri), and writes the manifests:

- k8s:    `DIR/k8s/`: ConfigMap, Deployment (TorchServe container, config from the ConfigMap,
          archives from a volume, readiness/liveness on /ping, resources, non-root), Service and
          HorizontalPodAutoscaler.
- kserve: `DIR/kserve/`: a ServingRuntime that torchship defines (so it keeps working as KServe
          retires its built-in TorchServe runtime) and an InferenceService using it, with
          `canaryTrafficPercent` for rollouts.

In the cluster the inference and metrics listeners bind all interfaces of the pod (the Service
is the way in), management stays on the pod's loopback, and models load from a snapshot of the
desired state (versions, default, workers, batching), so the pod needs no `apply`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from .desired import DesiredState

__all__ = ["export", "cluster_config", "IMAGE"]

IMAGE = "pytorch/torchserve:0.12.0-cpu"
STORE_IN_POD = "/home/model-server/model-store"
CONFIG_IN_POD = "/home/model-server/config"
KSERVE_ROOT = "/mnt/models"


def _snapshot(desired: DesiredState) -> str:
    models: dict[str, Any] = {}
    for name, m in desired.models.items():
        models[name] = {v: {"defaultVersion": v == m.default, "marName": f"{name}-{v}.mar",
                            "minWorkers": m.min_workers, "maxWorkers": m.max_workers, "batchSize": m.batch_size,
                            "maxBatchDelay": m.max_batch_delay_ms, "responseTimeout": 120}
                        for v in m.versions}
    return json.dumps({"name": "startup.cfg", "modelCount": sum(len(v) for v in models.values()), "models": models},
                      separators=(",", ":"))


def cluster_config(desired: DesiredState, model_store: str) -> str:
    """config.properties for TorchServe inside a pod."""
    lines = [
        "# Written by `torchship export`. Inside a pod: the Service reaches inference and metrics;",
        "# management stays on the pod's loopback; models load from the snapshot below.",
        "inference_address=http://0.0.0.0:8080",
        "management_address=http://127.0.0.1:8081",
        "metrics_address=http://0.0.0.0:8082",
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


def _copy_archives(desired: DesiredState, store: Path, out_store: Path, public_key: Path | None,
                   allow_unsigned: bool) -> list[Path]:
    from archiver import ensure_verified, signature_path

    out_store.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, m in desired.models.items():
        for version in m.versions:
            archive = Path(store) / f"{name}-{version}.mar"
            ensure_verified(archive, public_key=public_key, allow_unsigned=allow_unsigned)
            shutil.copyfile(archive, out_store / archive.name)
            if signature_path(archive).exists():
                shutil.copyfile(signature_path(archive), out_store / signature_path(archive).name)
            copied.append(out_store / archive.name)
    return copied


def _labels(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "torchship"}


def _resources(desired: DesiredState) -> dict[str, Any]:
    workers = sum(m.max_workers for m in desired.models.values())
    memory = 512 + 256 * workers  # the frontend ~400 MB, each worker ~250 MB (measured locally)
    return {"requests": {"cpu": str(max(1, workers // 2)), "memory": f"{memory}Mi"},
            "limits": {"cpu": str(max(2, workers)), "memory": f"{memory * 2}Mi"}}


def _container(desired: DesiredState, image: str, args: list[str], mounts: list[dict], name: str) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/ping", "port": 8080}, "periodSeconds": 10, "timeoutSeconds": 5}
    return {
        "name": name,
        "image": image,
        "args": args,
        "ports": [{"name": "inference", "containerPort": 8080}, {"name": "metrics", "containerPort": 8082}],
        "readinessProbe": {**probe, "initialDelaySeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 120, "failureThreshold": 6},
        "resources": _resources(desired),
        "volumeMounts": mounts,
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }


def _k8s(desired: DesiredState, app: str, image: str, config: str, max_replicas: int) -> list[dict[str, Any]]:
    labels = _labels(app)
    args = ["torchserve", "--start", "--foreground", "--ncs", "--ts-config", f"{CONFIG_IN_POD}/config.properties",
            "--model-store", STORE_IN_POD]
    mounts = [{"name": "config", "mountPath": CONFIG_IN_POD, "readOnly": True},
              {"name": "model-store", "mountPath": STORE_IN_POD, "readOnly": True},
              {"name": "logs", "mountPath": "/home/model-server/logs"},
              {"name": "tmp", "mountPath": "/home/model-server/tmp"}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true",
                                                               "prometheus.io/port": "8082"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "containers": [{**_container(desired, image, args, mounts, "torchserve"),
                                    "env": [{"name": "TEMP", "value": "/home/model-server/tmp"}]}],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{app}-config"}},
                        {"name": "model-store", "persistentVolumeClaim": {"claimName": f"{app}-model-store",
                                                                          "readOnly": True}},
                        {"name": "logs", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{app}-config", "labels": labels},
         "data": {"config.properties": config}},
        deployment,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "inference", "port": 8080, "targetPort": "inference"},
                                                {"name": "metrics", "port": 8082, "targetPort": "metrics"}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": app, "labels": labels},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                  "minReplicas": 1, "maxReplicas": max_replicas,
                  "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                      "type": "Utilization", "averageUtilization": 70}}}]}},
    ]


def _kserve(desired: DesiredState, app: str, image: str, storage_uri: str, canary: int | None) -> list[dict[str, Any]]:
    runtime = f"{app}-torchserve"
    args = ["torchserve", "--start", "--foreground", "--ncs", f"--model-store={KSERVE_ROOT}/model-store",
            f"--ts-config={KSERVE_ROOT}/config/config.properties"]
    container = _container(desired, image, args, [], "kserve-container")
    del container["volumeMounts"]  # KServe's storage initializer mounts the storageUri at /mnt/models
    serving_runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
        "metadata": {"name": runtime, "labels": _labels(app)},
        "spec": {"supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": False}],
                 "protocolVersions": ["v1", "v2"], "containers": [container]},
    }
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "pytorch"}, "runtime": runtime,
                                           "storageUri": storage_uri, "protocolVersion": "v2"},
                                 "minReplicas": 1}
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    inference_service = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                         "metadata": {"name": app, "labels": _labels(app)}, "spec": {"predictor": predictor}}
    return [serving_runtime, inference_service]


def export(target: str, desired: DesiredState, store: Path, out: Path, *, public_key: Path | None,
           allow_unsigned: bool = False, name: str = "torchship", image: str = IMAGE, max_replicas: int = 4,
           storage_uri: str | None = None, canary_percent: int | None = None) -> dict[str, list[Path]]:
    """Write the model-store layout and the manifests; returns what was written."""
    if target not in ("k8s", "kserve"):
        raise ValueError(f"export target must be k8s or kserve, not {target!r}")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError("canary percent must be from 0 to 100")
    out = Path(out)
    layout = out / "model-store"
    archives = _copy_archives(desired, store, layout / "model-store", public_key, allow_unsigned)
    in_pod_store = STORE_IN_POD if target == "k8s" else f"{KSERVE_ROOT}/model-store"
    config = cluster_config(desired, in_pod_store)
    (layout / "config").mkdir(parents=True, exist_ok=True)
    (layout / "config" / "config.properties").write_text(config)
    if target == "k8s":
        docs = _k8s(desired, name, image, config, max_replicas)
    else:
        docs = _kserve(desired, name, image, storage_uri or f"pvc://{name}-model-store", canary_percent)
    folder = out / target
    folder.mkdir(parents=True, exist_ok=True)
    manifests = []
    for doc in docs:
        path = folder / f"{doc['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        manifests.append(path)
    return {"archives": archives, "manifests": manifests, "config": [layout / "config" / "config.properties"]}
