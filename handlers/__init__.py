"""TorchServe handlers, one per model kind, packed into archives.

Inside a worker each file is imported by its base name as a top-level module, so handlers
import their helpers as top-level modules too (`import torchship_base_handler`), and every file
name here is unique. Tests put this folder on sys.path to import them the same way.
"""

from pathlib import Path

HANDLER_DIR = Path(__file__).resolve().parent

__all__ = ["HANDLER_DIR"]
