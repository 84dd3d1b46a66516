"""Housekeeping of the feature cache: its size per model and dataset, and pruning it.

The cache (``features.py``) is laid out as ``features/<model fingerprint>/<dataset>-<dataset fingerprint>/``.
Pruning removes whole files: those of toy models whose fingerprint no toy model built under
``UPGRADEBENCH_HOME`` has any more (a recipe changed and the model was rebuilt) and of toy datasets whose
fingerprint no world size there has any more (the world's tasks changed), those not used for a
given number of days (by the time each file was last written), or everything. Temporary files of killed writes are
removed by every prune.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .integrity import clean_stale_tmp
from .paths import features_dir, home


@dataclass
class CacheEntry:
    """The cached features of one (model, dataset): where, how much, how recently written."""

    model: str
    model_fingerprint: str
    dataset: str
    dataset_fingerprint: str  # two of one dataset: its class names, template or splits changed in between
    folder: Path
    files: int
    bytes: int
    last_written: float  # newest modification time of its files, seconds since the epoch

    def as_dict(self) -> dict:
        """JSON-able form (for ``--json``)."""
        return {"model": self.model, "model_fingerprint": self.model_fingerprint, "dataset": self.dataset,
                "dataset_fingerprint": self.dataset_fingerprint, "folder": str(self.folder), "files": self.files,
                "bytes": self.bytes,
                "days_old": round((time.time() - self.last_written) / 86400, 2)}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.safetensors") if p.is_file()]


def _model_name(files: list[Path]) -> str:
    """The model name recorded in a cache file's metadata ('?' when none can be read)."""
    from safetensors import safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("model", "?")
        except Exception:  # a damaged file: another one of the folder may tell
            continue
    return "?"


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """One entry per (model, dataset) folder of the feature cache, largest first."""
    root = root or features_dir()
    out = []
    for model_folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        for ds_folder in sorted(p for p in model_folder.glob("*") if p.is_dir()):
            files = _files(ds_folder)
            stats = [p.stat() for p in files]
            dataset, _, dataset_fingerprint = ds_folder.name.rpartition("-")
            out.append(CacheEntry(_model_name(files), model_folder.name, dataset, dataset_fingerprint, ds_folder,
                                  len(files), sum(s.st_size for s in stats),
                                  max((s.st_mtime for s in stats), default=0.0)))
    return sorted(out, key=lambda e: -e.bytes)


def built_toy_fingerprints() -> dict[str, set[str]]:
    """Toy model name -> the fingerprints of its builds present under ``UPGRADEBENCH_HOME`` (every world size)."""
    out: dict[str, set[str]] = {}
    for config in (home() / "world").glob("*/models/*/open_clip_config.json"):
        try:
            record = json.loads(config.read_text()).get("upgradebench", {})
        except (OSError, ValueError):
            continue
        if record.get("fingerprint"):
            out.setdefault(config.parent.name, set()).add(record["fingerprint"])
    return out


def toy_dataset_fingerprints() -> dict[str, set[str]]:
    """Toy dataset name -> its fingerprints in the world sizes present under ``UPGRADEBENCH_HOME`` (none present:
    empty, and no toy dataset's features count as outdated)."""
    from .world.datasets import ToyDataset, task_table
    from .world.worlds import world_table

    sizes = [p.name for p in (home() / "world").glob("*") if p.is_dir() and p.name in world_table()]
    return ({name: {ToyDataset(name, world=size).fingerprint for size in sizes} for name in task_table()}
            if sizes else {})


@dataclass
class PruneReport:
    """What a prune removed (or, in a dry run, would remove)."""

    removed: list[Path]
    bytes: int
    tmp_files: int


def prune_cache(unbuilt: bool = False, older_than_days: float | None = None, everything: bool = False,
                dry_run: bool = False, root: Path | None = None) -> PruneReport:
    """Remove cache files: of toy models no longer built or toy datasets since redefined (``unbuilt``), not written
    for ``older_than_days``, or all.

    A model or dataset of the real world is never pruned as ``unbuilt``: whether its weights or images still
    exist somewhere cannot be told from here.
    """
    root = root or features_dir()
    tmp = 0 if dry_run else clean_stale_tmp(root, recursive=True)
    built = built_toy_fingerprints() if unbuilt else {}
    toy_datasets = toy_dataset_fingerprints() if unbuilt else {}
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed: list[Path] = []
    size = 0
    for entry in cache_entries(root):
        stale_model = entry.model in built and entry.model_fingerprint not in built[entry.model]
        stale_dataset = entry.dataset in toy_datasets and entry.dataset_fingerprint not in toy_datasets[entry.dataset]
        if everything or stale_model or stale_dataset:
            doomed = [entry.folder]
        elif cutoff is not None:
            doomed = [p for p in _files(entry.folder) if p.stat().st_mtime < cutoff]
        else:
            continue
        for path in doomed:
            size += sum(p.stat().st_size for p in _files(path)) if path.is_dir() else path.stat().st_size
            removed.append(path)
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if not dry_run:
        for folder in [p for p in root.glob("*") if p.is_dir()] if root.is_dir() else []:
            for sub in [*folder.glob("*"), folder]:  # folders left holding nothing but lock files
                if sub.is_dir() and all(p.name.endswith(".lock") for p in sub.iterdir()):
                    shutil.rmtree(sub, ignore_errors=True)
    return PruneReport(removed, size, tmp)
