"""The toy model zoo: builds the embedded world's models on first use and caches them (placeholder)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..paths import world_dir


def model_dir(name: str) -> Path:
    """The local-dir folder of toy model ``name``."""
    return world_dir() / "models" / name


def ensure_model(name: str) -> Path:
    """The folder of toy model ``name``, built if missing."""
    folder = model_dir(name)
    if not (folder / "open_clip_config.json").is_file():
        raise UserError(f"Toy model {name!r} is not built yet and the world builder has not landed.")
    return folder
