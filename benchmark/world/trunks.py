"""Registers the world's EVA-style timm trunks (``trunks.json``) with timm, once per process.

open_clip builds a ``CustomTextCLIP`` vision tower with ``timm.create_model(name)``, so the names must
be known to timm before any toy EVA model is created or loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any


@lru_cache(maxsize=1)
def trunk_table() -> dict[str, dict[str, Any]]:
    """The trunk definitions, by timm model name."""
    table = json.loads(resources.files(__package__).joinpath("trunks.json").read_text())
    return {k: v for k, v in table.items() if not k.startswith("_")}


@lru_cache(maxsize=1)
def register_trunks() -> list[str]:
    """Register every trunk of ``trunks.json`` with timm (idempotent); returns their names."""
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    names = []
    for name, args in trunk_table().items():
        if name not in timm.list_models(name):

            # the default binds this iteration's args (a read-only copy: a default is shared by every call)
            def entrypoint(pretrained: bool = False, _args: Mapping[str, Any] = MappingProxyType(dict(args)), **kwargs):
                if pretrained:
                    raise ValueError("the embedded world's trunks have no pretrained weights")
                for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                    kwargs.pop(key, None)  # timm's factory passes these; a bare Eva does not take them
                merged = {**_args, **kwargs}
                merged["ref_feat_shape"] = tuple(merged.get("ref_feat_shape") or ()) or None
                return Eva(**merged)

            entrypoint.__name__ = name
            entrypoint.__module__ = __name__
            register_model(entrypoint)
        names.append(name)
    return names
