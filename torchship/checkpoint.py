"""Checkpoints from any training script: the weights and lineage that torchship packages.

A training script of your own saves its model with one call, and gets the checkpoint the example
models get: `model.safetensors` (the state_dict, no pickle) and `meta.json` (written last, so a run
without it is incomplete) recording the model, hyper-parameters, the training data's files and
fingerprint, metrics, history, seed, torch and Python versions, the git commit of your code and
whether it had uncommitted changes, the time, and the weights' sha256 (so packaging does not hash
them again)::

    from torchship import checkpoint

    run = checkpoint.new_run("checkpoints", "my-model")        # checkpoints/my-model/<UTC time>/
    checkpoint.save(
        model, run, name="my-model",
        architecture={"in_features": 4, "classes": 3},         # what your handler builds the model from
        hyper_parameters={"lr": 1e-3, "epochs": 10},
        metrics={"val_accuracy": 0.93}, data_files=["data/train.csv"], seed=0,
        drift_signals={"f0": held_out[:, 0].tolist(), "pred_class": predicted},  # the drift reference
    )
    checkpoint.latest("checkpoints", "my-model")               # the newest complete run

Then `torchship package my-model --checkpoint RUN --handler handler.py --model-file model.py`, or,
with the model recorded in torchship.yaml, `torchship package my-model`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.archiver.names import check_name
from torchship.sdk.errors import BadInput, TrainingError

if TYPE_CHECKING:
    import torch

__all__ = ["save", "new_run", "latest", "read_meta", "code_folder"]

_StrPath = str | os.PathLike[str]


def new_run(checkpoints_dir: _StrPath, name: str) -> Path:
    """Create and return a fresh run folder, `checkpoints_dir/NAME/<UTC time>` (unique; runs sort by time)."""
    from torchship.train.common import new_run_dir

    check_name(name)
    return new_run_dir(Path(checkpoints_dir), name)


def latest(checkpoints_dir: _StrPath, name: str | None = None) -> Path | None:
    """Return the newest complete run (weights and meta.json) of a model, or None when it has none.

    `latest("checkpoints", "my-model")` looks in checkpoints/my-model; `latest("checkpoints/my-model")`
    in that folder itself. Newest by the time meta.json records, then by run name.
    """
    from torchship.train.common import latest_run

    if name is not None:
        check_name(name)
    return latest_run(Path(checkpoints_dir), name)


def read_meta(run_dir: _StrPath) -> dict[str, Any]:
    """Return a checkpoint's meta.json; TrainingError when the run is not complete."""
    from torchship.train.common import is_complete_run

    run = Path(run_dir)
    if not is_complete_run(run):
        raise TrainingError(f"{run} is not a complete checkpoint (needs model.safetensors and meta.json)")
    try:
        meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read {run / 'meta.json'}: {exc}") from None
    if not isinstance(meta, dict):
        raise TrainingError(f"{run / 'meta.json'} does not hold a JSON object")
    return meta


def save(
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    run_dir: _StrPath,
    *,
    name: str,
    hyper_parameters: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    data_files: Iterable[_StrPath] = (),
    seed: int | None = None,
    architecture: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    kind: str = "custom",
    code_dir: _StrPath | None = None,
    drift_signals: Mapping[str, Sequence[Any]] | None = None,
    categorical_signals: Iterable[str] = (),
) -> Path:
    """Write a checkpoint of `model` into `run_dir` (created if needed) and return the folder.

    Args:
        model: a `torch.nn.Module` (its state_dict is saved) or a state_dict. Tensors only; tied weights
            are saved under each name.
        run_dir: the run folder, e.g. from `new_run`. Refused when it already holds a checkpoint.
        name: the model's name (the one rule for names: letters, digits, '_', '-', '.').
        hyper_parameters: how it was trained (JSON: strings, numbers, booleans, lists, mappings).
        metrics: name -> a finite number, e.g. {"val_accuracy": 0.93}.
        data_files: the training data's files: each one's path, sha256 and size are recorded, and
            their fingerprint (as the example models record theirs).
        seed: the random seed the run used.
        architecture: what the handler builds the model from (JSON), recorded as meta["model"]["architecture"].
        history: per-epoch figures, e.g. [{"epoch": 1, "train_loss": 0.7}, ...]; also drawn as
            training_curve.png when matplotlib is installed.
        kind: meta["model"]["kind"]; "custom" unless it is one of torchship's example architectures.
        code_dir: a folder in the git repository of the training code, whose commit (and whether
            tracked files have uncommitted changes) is recorded. Default: the running script's folder
            when it is in git, else the current folder.
        drift_signals: the drift reference: each signal's values over the held-out data, e.g.
            {"f0": [...], "pred_class": ["a", ...], "pred_score": [...]}, the same names the handler's
            `signals` gives for one request (the prediction signals pred_class and pred_score are read
            from a classifier's answers). Described in meta.json's `reference` (deciles of numbers,
            proportions of categories), against which `torchship drift` and the drift metric judge the
            captured traffic. Numbers unless named in `categorical_signals` (pred_class always is).

    Every argument is checked before anything is written: BadInput (an argument) or TrainingError (the
    folder holds a checkpoint already, the model's state cannot be saved as safetensors), each with one
    clear line.
    """
    from torchship.train.common import WEIGHTS_NAME, describe_files, weights_state, write_checkpoint

    check_name(name)
    if not isinstance(kind, str) or not kind:
        raise BadInput(f"kind must be a non-empty string, not {kind!r}")
    hyper = _json_object(hyper_parameters, "hyper_parameters")
    arch = None if architecture is None else _json_object(architecture, "architecture")
    figures = _figures(metrics or {}, "metrics")
    epochs = _history(history)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadInput(f"seed must be an integer, not {seed!r}")
    files = _data_files(data_files)
    reference = _reference(kind, drift_signals, categorical_signals)
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise TrainingError(f"{run} is a file, not a run folder")
    held = [f for f in ("meta.json", WEIGHTS_NAME) if (run / f).exists()]
    if held:
        raise TrainingError(
            f"{run} already holds a checkpoint ({', '.join(held)}): save each run into a new folder "
            "(torchship.checkpoint.new_run), nothing was written"
        )
    state = weights_state(model)  # a model safetensors cannot hold is refused before the folder is made
    try:
        entries, fingerprint = describe_files(files)
    except OSError as exc:
        raise BadInput(f"cannot read the data file {exc.filename}: {exc.strerror}") from None
    for entry, path in zip(entries, files):
        entry["path"] = _shown(path)
    git_dir = Path(code_dir) if code_dir is not None else code_folder()
    run.mkdir(parents=True, exist_ok=True)
    write_checkpoint(
        run,
        model=state,
        kind=kind,
        architecture=arch,
        hyper_parameters=hyper,
        data={"files": entries, "fingerprint": fingerprint if entries else None},
        metrics=figures,
        history=epochs,
        seed=seed,
        seconds=None,
        name=name,
        git_dir=git_dir,
        extra={"reference": reference} if reference else None,
    )
    return run


def code_folder() -> Path:
    """Return where the training code is: the running script's folder when it is in git, else the current folder."""
    from torchship.train.common import git_state

    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script:
        folder = Path(script).resolve().parent
        if folder.is_dir() and git_state(folder)[0] is not None:
            return folder
    return Path.cwd()


# ------------------------------------------------------------------ checks


def _json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadInput(f"{what} must be a mapping (a dict), not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise BadInput(f"{what}: key {key!r} is not a string")
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what} must be JSON (strings, finite numbers, booleans, lists, mappings): {exc}") from None


def _reference(
    kind: str, signals: Mapping[str, Sequence[Any]] | None, categorical: Iterable[str]
) -> dict[str, Any] | None:
    """The drift reference of `save`'s drift_signals, every value checked first."""
    from torchship.handlers import torchship_signals

    if signals is None:
        return None
    if not isinstance(signals, Mapping) or not signals:
        raise BadInput("drift_signals must be a non-empty mapping of signal names to held-out values")
    if isinstance(categorical, str):
        categorical = [categorical]
    named = set(categorical)
    unknown = named - set(signals)
    if unknown:
        raise BadInput(f"categorical_signals names signals drift_signals does not have: {', '.join(sorted(unknown))}")
    kinds = torchship_signals.CATEGORICAL | named
    out: dict[str, list[Any]] = {}
    for name, values in signals.items():
        if not isinstance(name, str) or not name:
            raise BadInput(f"drift_signals: {name!r} is not a signal name")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
            raise BadInput(f"drift_signals[{name!r}] must be a list of held-out values")
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        if len(values) < 2:
            raise BadInput(
                f"drift_signals[{name!r}] has {len(values)} value(s): describe the held-out data (100 or more)"
            )
        if name in kinds:
            if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
                raise BadInput(f"drift_signals[{name!r}] is categorical: its values must be strings or integers")
        elif all(_real(v) for v in values):
            values = [float(v) for v in values]  # numpy and torch scalars too
        else:
            raise BadInput(f"drift_signals[{name!r}] must hold finite numbers (or name it in categorical_signals)")
        out[name] = values
    held_out = max(len(v) for v in out.values())
    return torchship_signals.reference(kind, out, held_out, categorical=named)


def _real(value: Any) -> bool:
    """A finite real number of any type (Python, numpy, a 0-d tensor's item), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _figures(value: Mapping[str, Any], what: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise BadInput(f"{what} must be a mapping of names to numbers, not {type(value).__name__}")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or not key:
            raise BadInput(f"{what}: key {key!r} is not a name")
        if hasattr(number, "item") and callable(number.item) and getattr(number, "ndim", 0) == 0:
            number = number.item()  # a 0-d tensor or numpy scalar
        if not _number(number):
            raise BadInput(f"{what}[{key!r}] must be a finite number, not {number!r}")
        out[key] = number
    return out


def _history(history: Sequence[Mapping[str, Any]] | None) -> list[dict[str, float]]:
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise BadInput(f"history must be a list of mappings (one per epoch), not {type(history).__name__}")
    return [_figures(row, f"history[{i}]") for i, row in enumerate(history)]


def _data_files(paths: Iterable[_StrPath]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]  # one file given bare
    out: dict[Path, Path] = {}  # resolved -> as given
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise BadInput(f"data file not found: {path}")
        if not path.is_file():
            raise BadInput(
                f"data file {path} is not a file (give the files of a folder, e.g. sorted(folder.rglob('*')))"
            )
        out.setdefault(path.resolve(), path)
    return sorted(out)  # resolved, in path order: the same files give the same fingerprint however written


def _shown(path: Path) -> str:
    """A data file's path as recorded: relative to the current folder when inside it, else absolute."""
    full = path.resolve()
    try:
        return full.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(full)
