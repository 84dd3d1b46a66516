"""upgradebench: do plug-in modules fine-tuned on one vision-language model survive its upgrade?

The public harness API that methods and plugins use is re-exported here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("upgradebench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .errors import UnknownNameError, UserError
from .models import VLM, ModelSpec, load_vlm

__all__ = ["VLM", "ModelSpec", "UnknownNameError", "UserError", "__version__", "load_vlm"]
