"""The dataset registry: name -> factory ``(data_root: Path) -> Dataset``; lazy, with "did you mean".

The built-in datasets are data: ``families.json`` lists each family's catalogue (``world/tasks.json``,
``data/coop_datasets.json``) and its ``"module:attr"`` factory. Their names and listing metadata come from
the catalogues alone; a family's module is imported only when one of its datasets is built, and imports
nothing but the dataset contract, so this module never imports an implementation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..paths import data_root as _data_root
from ..registry import Registry, import_target
from .dataset import Dataset

DatasetFactory = Callable[[Path], Dataset]


def _build(factory: str, name: str, data_root: Path) -> Dataset:
    """Build built-in dataset ``name`` with its family's lazy ``factory(name, data_root)``."""
    return import_target(factory)(name, data_root)


def read_catalogue(ref: str) -> dict[str, dict[str, Any]]:
    """The rows of the packaged JSON table ``"package/file.json"``, by name (keys starting with ``_`` skipped)."""
    package, _, file = ref.partition("/")
    table = json.loads(resources.files(package).joinpath(file).read_text(encoding="utf-8"))
    return {name: row for name, row in table.items() if not name.startswith("_")}


def _register_builtins(registry: Registry[DatasetFactory]) -> None:
    families = read_catalogue(f"{__package__}/families.json")
    for kind, family in families.items():
        for name, row in read_catalogue(family["catalogue"]).items():
            meta: dict[str, Any] = {key: row.get(field) for key, field in family["meta"].items()}
            registry.register(name, partial(_build, family["factory"], name), kind=kind, **meta)


DATASETS: Registry[DatasetFactory] = Registry("dataset", builtins=_register_builtins)


def register_dataset(name: str, factory: DatasetFactory | str, **meta) -> None:
    """Register a dataset factory (or a lazy ``"module:attr"`` reference) under ``name``.

    ``meta`` holds what listing needs without loading: ``num_classes``, ``kind`` (``world``/``coop``), ``folder``.
    """
    DATASETS.register(name, factory, **meta)


def dataset_names() -> list[str]:
    """All registered dataset names."""
    return DATASETS.names()


def get_dataset(name: str, data_root: str | Path | None = None) -> Dataset:
    """Build dataset ``name`` rooted at ``data_root`` (``--data-root`` / ``UPGRADEBENCH_DATA``)."""
    factory = DATASETS.get(name)
    return factory(_data_root(data_root))


def dataset_problem(name: str, data_root: str | Path | None = None) -> str | None:
    """Why dataset ``name`` cannot be read here (the error a run would stop with), or None when it can."""
    try:
        len(get_dataset(name, data_root).classnames)
    except UserError as exc:
        return exc.message
    return None
