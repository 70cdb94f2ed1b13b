"""Validate manifests against the official OpenAPI models: the `kubernetes` client's, and the
models KServe's SDK generates from its CRDs. Strict: an unknown field, a wrong type or a missing
required field fails, as `kubectl apply --validate=strict` would."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
from typing import Any

import kubernetes.client.models as k8s_models


def _kserve_models():
    """kserve's generated models without kserve/__init__ (which needs its whole server stack)."""
    if "kserve.models" in sys.modules:
        return sys.modules["kserve.models"]
    if "kserve" not in sys.modules:
        wheel = os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "data",
            ".cache",
            "kserve-0.21.0-py3-none-any.whl",
        )
        if importlib.util.find_spec("kserve") is None and os.path.isfile(wheel):
            sys.path.append(wheel)  # zipimport: `make data` keeps the SDK wheel, never installs it
        spec = importlib.util.find_spec("kserve")
        if spec is None or not spec.submodule_search_locations:
            return None
        pkg = types.ModuleType("kserve")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = pkg
    return importlib.import_module("kserve.models")


def _class(name: str):
    for module in (k8s_models, _kserve_models()):
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no OpenAPI model {name}")


KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "Secret"): "V1Secret",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("networking.k8s.io/v1", "Ingress"): "V1Ingress",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
_PRIMITIVES = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "object": object,
    "datetime": str,
    "date": str,
    "bytes": str,  # a Secret's data: base64 text in the manifest
}


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems with one manifest; empty when it is valid."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        return [f"unknown apiVersion/kind {key}"]
    problems: list[str] = []
    _check(doc, KINDS[key], doc.get("kind", ""), problems)
    return problems


def _check(value: Any, type_name: str, where: str, problems: list[str]) -> None:
    if value is None:
        return
    match = re.match(r"[lL]ist\[(.*)\]$", type_name)
    if match:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return
        for i, item in enumerate(value):
            _check(item, match.group(1), f"{where}[{i}]", problems)
        return
    match = re.match(r"(?:dict\(str, (.*)\)|Dict\[str, (.*)\])$", type_name)
    if match:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping")
            return
        for k, item in value.items():
            _check(item, match.group(1) or match.group(2), f"{where}.{k}", problems)
        return
    if type_name in _PRIMITIVES:
        if type_name == "int" and isinstance(value, bool) or not isinstance(value, _PRIMITIVES[type_name]):
            problems.append(f"{where}: expected {type_name}, got {type(value).__name__}")
        return
    cls = _class(type_name)
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a {type_name} mapping")
        return
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{where}.{key}: unknown field of {type_name}")
            continue
        attr = by_json[key]
        _check(item, cls.openapi_types[attr], f"{where}.{key}", problems)
        kwargs[attr] = item
    try:  # the generated constructors check required fields and enumerations
        cls(**{k: v for k, v in kwargs.items()})
    except ValueError as exc:
        problems.append(f"{where}: {exc}")


__all__ = ["validate", "KINDS"]
