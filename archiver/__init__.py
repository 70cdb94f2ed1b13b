"""The packaging layer: an ArchiveSpec goes in, a TorchServe .mar in the model store comes out."""

from .build import build, archive_path
from .examples import example_spec, EXAMPLES
from .model_config import validate_model_config
from .spec import ArchiveSpec

__all__ = ["ArchiveSpec", "build", "archive_path", "example_spec", "EXAMPLES", "validate_model_config"]
