"""Recipes of the embedded world's toy models, as data (``recipes.json``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def recipe_table() -> dict[str, dict[str, Any]]:
    """Every toy model's recipe, by alias."""
    table = json.loads(resources.files(__package__).joinpath("recipes.json").read_text())
    return {k: v for k, v in table.items() if not k.startswith("_")}


def world_aliases() -> dict[str, dict[str, Any]]:
    """Alias-table entries for the toy models (``{"world": name, "description": ...}``)."""
    return {name: {"world": name, "description": r.get("description", "")} for name, r in recipe_table().items()}
