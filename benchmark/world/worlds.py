"""Which size of the embedded world is in use (``UPGRADEBENCH_WORLD``) and where it lives.

The ``default`` world is what users get; ``micro`` is built in seconds for tests. Both have the same
model and dataset names; sizes come from ``worlds.json`` and each size is cached in its own folder.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UnknownNameError
from ..paths import world_dir

ENV_VAR = "UPGRADEBENCH_WORLD"
DEFAULT_WORLD = "default"


@lru_cache(maxsize=1)
def world_table() -> dict[str, dict[str, Any]]:
    """Every world size's settings, by name."""
    table = json.loads(resources.files(__package__).joinpath("worlds.json").read_text())
    return {k: v for k, v in table.items() if not k.startswith("_")}


def world_name() -> str:
    """The world size selected by ``UPGRADEBENCH_WORLD`` (``default`` when unset)."""
    name = os.environ.get(ENV_VAR) or DEFAULT_WORLD
    if name not in world_table():
        raise UnknownNameError(f"world size ({ENV_VAR})", name, world_table(),
                               fix=f"unset {ENV_VAR} or set it to one of the valid sizes")
    return name


def world_config() -> dict[str, Any]:
    """The settings of the selected world size."""
    return world_table()[world_name()]


def world_root() -> Path:
    """The cache folder of the selected world size (``UPGRADEBENCH_HOME/world/<size>``)."""
    return world_dir() / world_name()
