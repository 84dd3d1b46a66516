"""The model layer: aliases (data), checkpoint resolution, fingerprints and the :class:`VLM` wrapper.

The aliases are importable at once; the names that need torch or open_clip (the loader, the :class:`VLM`) are
imported on first use, so that listing and describing models imports neither (``upgradebench models list``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .spec import ModelSpec, alias_names, builtin_aliases, parse_model

_LAZY = {"VLM": ".vlm", "describe_model": ".loader", "load_vlm": ".loader", "resolve_device": ".loader",
         "weights_problem": ".loader"}

__all__ = ["VLM", "ModelSpec", "alias_names", "builtin_aliases", "describe_model", "load_vlm", "parse_model",
           "resolve_device", "weights_problem"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
