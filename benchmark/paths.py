"""The only two places upgradebench reads data from or writes to.

``UPGRADEBENCH_HOME`` (default ``~/.cache/upgradebench``) holds the embedded world, feature caches and
default results; ``UPGRADEBENCH_DATA`` (or ``--data-root``) holds real datasets in the CoOp layout.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .guard import home_folder


def home() -> Path:
    """Root of everything upgradebench caches (world, features, runs). A ``UPGRADEBENCH_HOME`` that is empty
    (it would mean the current folder), the filesystem root, a file or not writable is a user error
    (:func:`upgradebench.guard.home_folder`)."""
    value = os.environ.get("UPGRADEBENCH_HOME")
    if value is None:
        return Path.home() / ".cache" / "upgradebench"
    return _checked_home(value)


@functools.lru_cache(maxsize=8)  # checked once per value: home() is asked for every cached file
def _checked_home(value: str) -> Path:
    return home_folder(value)


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """Root of the real datasets: ``override``, else ``UPGRADEBENCH_DATA``, else ``HOME/data``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("UPGRADEBENCH_DATA")
    return Path(env).expanduser() if env else home() / "data"


def world_dir() -> Path:
    """Where the embedded offline world (images are procedural; only models live here) is cached."""
    return home() / "world"


def features_dir() -> Path:
    """Where cached image features live."""
    return home() / "features"


def default_results_dir() -> Path:
    """Where ``upgradebench run`` writes result rows when ``--results`` is not given."""
    return home() / "results"
