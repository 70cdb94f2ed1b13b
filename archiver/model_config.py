"""Validation of model-config.yaml: TorchServe ignores a wrongly typed value with only a warning."""

from __future__ import annotations

from typing import Any

from .errors import ArchiveError

# TorchServe 0.12.0's keys and the type each must have.
_TYPES: dict[str, type | tuple[type, ...]] = {
    "minWorkers": int,
    "maxWorkers": int,
    "batchSize": int,
    "maxBatchDelay": int,
    "responseTimeout": int,
    "startupTimeout": int,
    "maxRetryTimeoutInSec": int,
    "clientTimeoutInMills": int,
    "jobQueueSize": int,
    "parallelLevel": int,
    "maxSequenceJobQueueSize": int,
    "maxNumSequence": int,
    "sequenceMaxIdleMSec": int,
    "deviceType": str,
    "parallelType": str,
    "deviceIds": list,
    "useJobTicket": bool,
    "continuousBatching": bool,
    "sequenceBatching": bool,
    "asyncCommunication": bool,
    "useVenv": bool,
    "torchrun": dict,
    "handler": dict,
    "pt2": (dict, str),
}
_AT_LEAST = {
    "minWorkers": 0,
    "maxWorkers": 0,
    "batchSize": 1,
    "maxBatchDelay": 0,
    "responseTimeout": 1,
    "startupTimeout": 1,
    "jobQueueSize": 1,
}
_CHOICES = {"deviceType": {"cpu", "gpu", "neuron"}, "parallelType": {"pp", "tp", "pptp", "custom"}}


def validate_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return the config if every known key has the right type and range, else raise ArchiveError.

    Unknown keys are allowed: TorchServe hands them to the handler as model_yaml_config.
    """
    if not isinstance(config, dict):
        raise ArchiveError("model-config must be a mapping of keys to values")
    problems = []
    for key, value in config.items():
        expected = _TYPES.get(key)
        if expected is None:
            continue
        types = expected if isinstance(expected, tuple) else (expected,)
        # bool is an int in Python but not in TorchServe's YAML parser
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            problems.append(f"{key} must be {names}, not {type(value).__name__} ({value!r})")
            continue
        if key in _AT_LEAST and value < _AT_LEAST[key]:
            problems.append(f"{key} must be >= {_AT_LEAST[key]}, not {value}")
        if key in _CHOICES and value not in _CHOICES[key]:
            problems.append(f"{key} must be one of {sorted(_CHOICES[key])}, not {value!r}")
    if (
        isinstance(config.get("minWorkers"), int)
        and isinstance(config.get("maxWorkers"), int)
        and config["minWorkers"] > config["maxWorkers"]
    ):
        problems.append(f"minWorkers ({config['minWorkers']}) is above maxWorkers ({config['maxWorkers']})")
    if problems:
        raise ArchiveError("invalid model-config: " + "; ".join(problems))
    return config
