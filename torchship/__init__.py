"""torchship: take PyTorch models from training to a versioned, verified, scaled TorchServe.

    from torchship import Project
    p = Project(".")                        # this project: its server, model store, keys, registry
    p.deploy("mlp", version="1.0")
    p.client.predict("mlp", {"data": [0.0] * 100})

`Project` does what the `torchship` CLI does, with the same registry history; `TorchServe` is the
thin client for a server someone else runs.

The packaging layer, the example trainers and the handlers are `torchship.archiver`,
`torchship.train` and `torchship.handlers` (in the repository: the top-level folders `archiver/`,
`train/` and `handlers/`). This module loads nothing until a name is asked for, so importing one
of them does not import the client or the server code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ops.server import LocalServer
    from .project import History, Project, TuneResult
    from .sdk import errors
    from .sdk.client import TorchServe
    from .sdk.errors import TorchServeError

__version__ = "0.1.0"

__all__ = ["Project", "History", "TuneResult", "TorchServe", "LocalServer", "TorchServeError", "errors", "__version__"]

_WHERE = {
    "Project": ".project",
    "History": ".project",
    "TuneResult": ".project",
    "TorchServe": ".sdk.client",
    "LocalServer": ".ops.server",
    "TorchServeError": ".sdk.errors",
}


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module(".sdk.errors", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'torchship' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
