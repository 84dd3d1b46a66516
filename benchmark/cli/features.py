"""``upgradebench features``: precompute the image features runs need, for several models and datasets at once.

For every model x dataset: the test split (test transform) and, per seed, the few-shot training images
(``--views`` augmented views, one decode per image, and the test transform) and validation shots, under
the same cache keys as ``upgradebench run``. Only what is not cached yet is computed, so an interrupted
command is resumed by running it again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from ..data import DATASETS, Dataset, load_fewshot
from ..data.coop import CoopDataset
from ..defaults import DEFAULT_SEEDS, DEFAULT_SHOTS, DEFAULT_VIEWS
from ..paths import data_root as resolve_data_root
from ._common import err_console, print_json, print_table, print_text
from ._options import DataRoot, Device, Download, Json, Precision, Workers, parse_pairs
from .datasets import dataset_found

if TYPE_CHECKING:
    from ..runner import Runner

ALL = "all"


def features(
    model: list[str] = typer.Option(..., "--model", help="Model(s) whose image features are computed; repeatable."),
    dataset: list[str] = typer.Option(..., "--dataset", "-d",
                                      help=f"Dataset(s); repeatable. '{ALL}' = every dataset found."),
    shots: int = typer.Option(DEFAULT_SHOTS, "--shots", "-k",
                              help="Training images per class of the few-shot samples."),
    seed: list[int] = typer.Option(list(DEFAULT_SEEDS), "--seed", help="Few-shot sample seed(s); repeatable."),
    views: int = typer.Option(DEFAULT_VIEWS, "--views", min=1, help="Cached augmented views per training image."),
    precision: str = Precision,
    pretrained: list[str] = typer.Option(None, "--pretrained", help="Local weights: MODEL=PATH; repeatable."),
    device: str = Device,
    data_root: Path = DataRoot,
    download: bool = Download,
    workers: int = Workers,
    as_json: bool = Json,
) -> None:
    """Precompute test, train-view and validation features of MODEL(s) x DATASET(s) (only the missing ones)."""
    from ..models import parse_model
    from ..runner import Runner
    from ..task import FewShotTask

    weights = parse_pairs(pretrained, "--pretrained")
    runner = Runner(None, device, precision, data_root, download, workers)
    datasets = _datasets(runner, dataset, data_root)
    for name in model:  # every mistake is reported before the first model loads
        parse_model(name, weights.get(name))
    rows = []
    for name in model:
        vlm = runner.model(name, weights.get(name))
        for ds in datasets:
            err_console.print(f"[bold]features[/] {escape(f'{vlm.name} on {ds.name}')}", highlight=False)
            before, start = runner.cache.computed, time.perf_counter()
            row = {"model": vlm.name, "dataset": ds.name, "test": 0, "train": 0, "val": 0}
            if ds.has_split("test"):
                items = ds.split("test")
                runner.cache.get(vlm, ds, "test", items, vlm.test_transform_spec)
                row["test"] = len(items)
            if ds.has_split("train"):
                for s in seed:
                    task = FewShotTask(ds, load_fewshot(ds, shots, s), vlm, runner.cache, views=views)
                    task.train_view_features()
                    task.train_plain_features()
                    task.val_features()
                    row["train"] += len(task.train_items)
                    row["val"] += len(task.val_labels)
            row.update(encoded=runner.cache.computed - before, seconds=round(time.perf_counter() - start, 2))
            rows.append(row)
    if as_json:
        print_json({"features": str(runner.cache.root), "views": views, "shots": shots, "seeds": list(seed),
                    "rows": rows})
        return
    cols = ["model", "dataset", "test", "train", "val", "encoded", "seconds"]
    print_table(f"features ({views} views of each training image, {shots} shots, seeds {', '.join(map(str, seed))})",
                cols, [[r[c] for c in cols] for r in rows])
    print_text(f"features cached under {runner.cache.root}", err=True)


def _datasets(runner: Runner, names: list[str], data_root: Path | None) -> list[Dataset]:
    """The datasets named (``all``: every registered dataset found), each checked to be readable."""
    if ALL in names:
        root = resolve_data_root(data_root)
        names = [e.name for e in DATASETS.entries() if dataset_found(e.name, e.meta.get("kind", ""), root)]
    out = [runner.dataset(name) for name in dict.fromkeys(names)]
    for ds in out:  # a missing folder or file is reported before any model loads
        problems = ds.missing() if isinstance(ds, CoopDataset) else []
        if problems:
            raise problems[0]
    return out
