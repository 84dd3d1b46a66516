"""``upgradebench datasets``: which datasets exist, what one contains, and what is missing on disk."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..data import DATASETS, get_dataset
from ..data.coop import CoopDataset
from ..data.coop_check import DatasetCheck, Track, check_coop_dataset
from ..errors import UserError
from ..paths import data_root as resolve_data_root
from ._common import console, err_console, print_json, print_table, print_text
from ._options import DataRoot, Json

app = typer.Typer(help="Datasets: what is registered, what one contains, what is missing on disk.",
                  no_args_is_help=True)

T = TypeVar("T")


def dataset_found(name: str, kind: str, root: Path) -> bool:
    """Whether dataset ``name`` is usable under ``root`` (cheap: no split file is parsed)."""
    if kind == "world":
        return True  # procedural: nothing to find on disk
    try:
        dataset = get_dataset(name, root)
    except UserError:
        return False
    return not dataset.missing() if isinstance(dataset, CoopDataset) else True


@app.command("list")
def list_datasets(
    as_json: bool = Json,
    data_root: Path = DataRoot,
) -> None:
    """List every registered dataset with its number of classes, kind and whether it is on disk."""
    root = resolve_data_root(data_root)
    rows = []
    for entry in DATASETS.entries():
        meta = entry.meta
        kind = meta.get("kind", "")
        num_classes = meta.get("num_classes")
        if num_classes is None and kind == "world":  # tasks.json holds no counts; a toy dataset is built without I/O
            num_classes = get_dataset(entry.name, root).num_classes
        rows.append({
            "name": entry.name, "kind": kind, "num_classes": num_classes, "ood_of": meta.get("ood_of"),
            "found": dataset_found(entry.name, kind, root),
            "path": str(root / meta["folder"]) if kind == "coop" else None,
            "description": meta.get("description", ""), "origin": entry.origin,
        })
    if as_json:
        print_json(rows)
        return
    print_table(f"datasets (data root {root})", ["name", "classes", "kind", "ood of", "found", "description"],
                [[r["name"], r["num_classes"], r["kind"], r["ood_of"], "yes" if r["found"] else "no", r["description"]]
                 for r in rows])


@app.command("show")
def show_dataset(
    name: str = typer.Argument(..., help="Dataset name (see `upgradebench datasets list`)."),
    as_json: bool = Json,
    data_root: Path = DataRoot,
) -> None:
    """Show one dataset as loaded: template, class names (after CoOp's rules), split sizes, fingerprint."""
    dataset = get_dataset(name, resolve_data_root(data_root))
    info: dict[str, Any] = {
        "name": dataset.name, "template": dataset.template, "num_classes": dataset.num_classes,
        "classnames": dataset.classnames,
        "splits": {s: len(dataset.split(s)) for s in ("train", "val", "test") if dataset.has_split(s)},
        "fewshot_dir": str(dataset.fewshot_dir), "fingerprint": dataset.fingerprint,
    }
    if as_json:
        print_json(info)
        return
    names = info["classnames"]
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    rows = [[k, v] for k, v in info.items() if k not in ("classnames", "splits")]
    rows += [["classnames", shown]] + [[f"{s} items", n] for s, n in info["splits"].items()]
    print_table(f"dataset {name}", ["field", "value"], rows)


@contextmanager
def _progress_bars() -> Iterator[Track]:
    """A ``track`` function drawing one rich bar per (dataset, split) on stderr."""
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:

        def track(results: Iterable[T], total: int, description: str) -> Iterator[T]:
            task = progress.add_task(f"checking {description}", total=total)
            for result in results:
                yield result
                progress.advance(task)
            progress.remove_task(task)

        yield track


def _print_report(report: DatasetCheck) -> None:
    sizes = ", ".join(f"{s.split} {s.images}" for s in report.splits)
    images = f", images: {sizes}" if sizes else ""  # a generated dataset has no image files
    if report.complete:
        console.print(f"[green]ok[/]  {escape(f'{report.name}: {report.num_classes} classes{images} ({report.path})')}",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold red]incomplete[/]  {escape(f'{report.name} ({report.path})')}", highlight=False,
                      soft_wrap=True)
    for problem, fix in report.problems:
        print_text(f"  - {problem}")
        if fix:
            console.print(f"    [bold]fix:[/] {escape(fix)}", highlight=False, soft_wrap=True)
    for note in report.notes:
        print_text(f"  note: {note}")


@app.command("check")
def check_datasets(
    names: list[str] = typer.Argument(None, help="Datasets to check (default: every CoOp dataset found on disk)."),
    data_root: Path = DataRoot,
    as_json: bool = Json,
    decode: bool = typer.Option(True, "--decode/--exists-only",
                                help="Decode every image (default), or only check that the files exist (fast)."),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt",
                                      help="Record unreadable images in skipped_images.json and leave them out."),
    workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", min=1, help="Threads decoding images."),
) -> None:
    """Report per dataset exactly what is missing or broken and what to do; exit 1 if any is incomplete."""
    if skip_corrupt and not decode:
        raise UserError("--skip-corrupt needs the images decoded.", "drop --exists-only")
    root = resolve_data_root(data_root)
    requested = list(names or [])
    for name in requested:
        DATASETS.entry(name)  # unknown names fail here, with "did you mean"
    if not requested:
        coop = [e.name for e in DATASETS.entries() if e.meta.get("kind") == "coop"]
        requested = [n for n in coop if dataset_found(n, "coop", root)]
        if not requested:
            raise UserError(f"No CoOp-format dataset was found under {root}.",
                            "pass --data-root DIR (or set UPGRADEBENCH_DATA), or name a dataset to see what is missing")

    reports = []
    with _progress_bars() as track:
        for name in requested:
            dataset = get_dataset(name, root)
            if isinstance(dataset, CoopDataset):
                report = check_coop_dataset(dataset, decode=decode, skip_corrupt=skip_corrupt, workers=workers,
                                            track=track)
            else:
                report = DatasetCheck(name, "built in", dataset.num_classes, dataset.num_classes,
                                      notes=["generated, nothing on disk to check"])
            reports.append(report)
            if not as_json:
                _print_report(report)
    if as_json:
        print_json([r.to_json() for r in reports])
    if not all(r.complete for r in reports):
        raise typer.Exit(1)
