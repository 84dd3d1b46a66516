"""upgradebench: do plug-in modules fine-tuned on one vision-language model survive its upgrade?

The public harness API that methods and plugins use is re-exported here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("upgradebench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from typing import TYPE_CHECKING, Any

from .errors import UnknownNameError, UserError

if TYPE_CHECKING:
    from .models import VLM, ModelSpec, load_vlm

# the model layer imports torch: loaded on first use, so that `upgradebench --help` starts without it
_LAZY = {"VLM", "ModelSpec", "load_vlm"}


def __getattr__(name: str) -> Any:
    """The model layer's public names, imported on first access (PEP 562)."""
    if name in _LAZY:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VLM", "ModelSpec", "UnknownNameError", "UserError", "__version__", "load_vlm"]
