"""``upgradebench results show``: the paper's Table 2 layout from a results folder."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..results import read_results, summarize
from ._common import print_json, print_table
from ._options import Json

app = typer.Typer(help="Read result folders.", no_args_is_help=True)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.2f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.2f} ± {std:.2f}"


@app.command("show")
def show(
    folders: list[Path] = typer.Argument(..., help="Results folder(s)."),
    target: str = typer.Option(None, "--target", help="Only this target model."),
    method: list[str] = typer.Option(None, "--method", "-m", help="Only these methods (zero-shot stays as the reference)."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only these datasets."),
    reference: bool = typer.Option(False, "--reference", help="Only reference configurations (no variants), as Table 2."),
    as_json: bool = Json,
) -> None:
    """Per dataset and on average: Base / New / H for each method, mean ± std over seeds."""
    rows = read_results(*folders)
    if reference:
        rows = rows[rows.method_variant == ""]
    if method:
        rows = rows[rows.method.isin(method) | (rows.method == "zeroshot")]
    if dataset:
        rows = rows[rows.dataset.isin(dataset)]
    summary = summarize(rows)
    if target:
        summary = summary[summary.target == target]
    if as_json:
        print_json(summary.to_dict(orient="records"))
        return
    if summary.empty:
        print_table("no paired results (a run needs a base and a new row)", ["-"], [])
        return
    for (source, tgt), pair in summary.groupby(["source", "target"]):
        labels = sorted(pair.label.unique(), key=lambda l: (l != "zeroshot", l))
        datasets = [d for d in sorted(pair.dataset.unique()) if d != "Average"] + ["Average"]
        rows = []
        for d in datasets:
            for metric in ("base", "new", "H"):
                row = [d if metric == "base" else "", {"base": "Base", "new": "New", "H": "H"}[metric]]
                for label in labels:
                    hit = pair[(pair.dataset == d) & (pair.label == label)]
                    if hit.empty:
                        row.append("")
                        continue
                    r = hit.iloc[0]
                    std = r.get(f"{metric}_std") if d != "Average" else None
                    row.append(_cell(float(r[metric]), std))
                rows.append(row)
        print_table(f"{source} -> {tgt} (seeds per cell: mean ± std)", ["dataset", ""] + labels, rows)
