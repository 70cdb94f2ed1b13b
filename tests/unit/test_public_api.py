"""The public surface of torchship: exactly what `torchship` exports, and a docstring on every public name."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

import click

import torchship

EXPORTED = {"Project", "History", "TuneResult", "TorchServe", "LocalServer", "TorchServeError", "errors", "__version__"}


LOWER_LAYERS = ("torchship.archiver", "torchship.train", "torchship.handlers")  # their own surface, not this one


def modules() -> list[ModuleType]:
    """torchship and every module under it, imported (not the layers below it)."""
    found = [torchship]
    for info in pkgutil.walk_packages(torchship.__path__, prefix="torchship."):
        if info.name.startswith(LOWER_LAYERS):
            continue
        found.append(importlib.import_module(info.name))
    return found


def _doc_of(obj: Any) -> str | None:
    """The docstring written for `obj` (a click command's is its callback's; a dataclass without one gets
    an invented `Name(field, ...)` docstring, which does not count)."""
    if isinstance(obj, click.Command):
        return obj.callback.__doc__ if obj.callback is not None else obj.help
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc and doc.startswith(obj.__name__ + "("):
        return None
    return doc


def _function(member: Any) -> Any:
    """The function behind a class member (a method, static or class method, or property), else None."""
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if inspect.isfunction(member):
        return member
    return None


def public_names() -> dict[str, Any]:
    """Every public module, class, function and method defined in torchship, by dotted name."""
    out: dict[str, Any] = {}
    for module in modules():
        out[module.__name__] = module
        for name, obj in vars(module).items():
            if name.startswith("_"):
                continue
            target = obj.callback if isinstance(obj, click.Command) else obj
            if not (inspect.isclass(target) or inspect.isfunction(target)):
                continue
            if getattr(target, "__module__", None) != module.__name__:
                continue  # imported from elsewhere: documented where it is defined
            out[f"{module.__name__}.{name}"] = obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    fn = _function(member)
                    if not attr.startswith("_") and fn is not None:
                        out[f"{module.__name__}.{name}.{attr}"] = fn
    return out


def test_walk_finds_every_layer():
    names = {m.__name__ for m in modules()}
    assert {
        "torchship.project",
        "torchship.sdk.client",
        "torchship.ops.registry",
        "torchship.perf.tune",
        "torchship.cli.base",
    } <= names


def test_every_public_name_has_a_docstring():
    missing = sorted(name for name, obj in public_names().items() if not (_doc_of(obj) or "").strip())
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)


def test_docstrings_start_with_a_one_line_summary():
    """One style: a summary on one line that ends with a period, then (where useful) a blank line and more."""
    bad = []
    for name, obj in public_names().items():
        summary = inspect.cleandoc(_doc_of(obj) or "").split("\n\n")[0]
        if summary and ("\n" in summary or not summary.endswith(".")):
            bad.append(f"{name}: {summary.splitlines()[0]}")
    assert not bad, "summary is not one line ending with a period:\n" + "\n".join(sorted(bad))


def test_torchserve_constructor_arguments_are_documented():
    from torchship import TorchServe

    doc = TorchServe.__doc__ or ""
    params = [p for p in inspect.signature(TorchServe.__init__).parameters if p != "self"]
    assert params
    undocumented = [p for p in params if f"{p}:" not in doc]
    assert not undocumented, f"TorchServe's docstring does not describe {undocumented}"


def test_the_exported_surface_is_exactly_what_was_meant():
    assert set(torchship.__all__) == EXPORTED
    assert len(torchship.__all__) == len(EXPORTED)
    for name in torchship.__all__:
        assert hasattr(torchship, name), name
