"""The dataset registry: name -> factory ``(data_root: Path) -> Dataset``; lazy, with "did you mean"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..paths import data_root as _data_root
from ..registry import Registry
from .dataset import Dataset

DatasetFactory = Callable[[Path], Dataset]

DATASETS: Registry[DatasetFactory] = Registry("dataset")


def register_dataset(name: str, factory: DatasetFactory | str, **meta) -> None:
    """Register a dataset factory (or a lazy ``"module:attr"`` reference) under ``name``.

    ``meta`` holds what listing needs without loading: ``num_classes``, ``kind`` (``world``/``coop``), ``folder``.
    """
    DATASETS.register(name, factory, **meta)


def _ensure_builtins() -> None:
    # Importing these modules registers the built-in datasets (toy world first, then CoOp layouts).
    from ..world import datasets as _world  # noqa: F401
    from . import coop as _coop  # noqa: F401


def dataset_names() -> list[str]:
    """All registered dataset names."""
    _ensure_builtins()
    return DATASETS.names()


def get_dataset(name: str, data_root: str | Path | None = None) -> Dataset:
    """Build dataset ``name`` rooted at ``data_root`` (``--data-root`` / ``UPGRADEBENCH_DATA``)."""
    _ensure_builtins()
    factory = DATASETS.get(name)
    return factory(_data_root(data_root))


def dataset_problem(name: str, data_root: str | Path | None = None) -> str | None:
    """Why dataset ``name`` cannot be read here (the error a run would stop with), or None when it can."""
    try:
        len(get_dataset(name, data_root).classnames)
    except UserError as exc:
        return exc.message
    return None
