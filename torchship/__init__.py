"""torchship: take PyTorch models from training to a versioned, verified, scaled TorchServe.

    from torchship import TorchServe
    ts = TorchServe.from_config("config.properties")
    ts.predict("mlp", {"data": [0.0] * 100})
"""

from . import errors
from .client import TorchServe
from .errors import TorchServeError
from .server import LocalServer

__version__ = "0.1.0"

__all__ = ["TorchServe", "LocalServer", "TorchServeError", "errors", "__version__"]
