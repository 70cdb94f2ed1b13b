"""torchship: take PyTorch models from training to a versioned, verified, scaled TorchServe.

    from torchship import Project
    p = Project(".")                        # this project: its server, model store, keys, registry
    p.deploy("mlp", version="1.0")
    p.client.predict("mlp", {"data": [0.0] * 100})

`Project` does what the `torchship` CLI does, with the same registry history; `TorchServe` is the
thin client for a server someone else runs.
"""

from .ops.server import LocalServer
from .project import History, Project, TuneResult
from .sdk import errors
from .sdk.client import TorchServe
from .sdk.errors import TorchServeError

__version__ = "0.1.0"

__all__ = ["Project", "History", "TuneResult", "TorchServe", "LocalServer", "TorchServeError", "errors", "__version__"]
