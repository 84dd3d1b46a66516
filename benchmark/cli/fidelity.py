"""``upgradebench fidelity``: which of the paper's findings a results folder reproduces, with the numbers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ._common import console, print_json, print_table
from ._options import Json


def fidelity(
    results: list[Path] = typer.Option(..., "--results", "-r", help="Results folder(s) of runs; repeatable."),
    source: str = typer.Option(None, "--source", "-s", help="Source model (default: every pair in the results)."),
    target: str = typer.Option(None, "--target", "-t", help="Target model (default: every pair in the results)."),
    drift: Path = typer.Option(None, "--drift", help="Drift parquet from `upgradebench analyze drift` (Fig. 2b, 2c)."),
    shots: int = typer.Option(None, "--shots", min=1, help="Shots to compare (default: 16 when present)."),
    as_json: bool = Json,
) -> None:
    """The paper's findings (Table 2 averages, Fig. 2b-d, Tables 3-7, Fig. 4): published vs measured, held or not,
    and the Kendall tau of the method ranking; per dataset too for the paper's own models."""
    from upgradebench.analysis.drift import read_drift
    from upgradebench.analysis.fidelity import format_value, scorecards

    from ..results import read_results

    drift_rows = read_drift(drift) if drift is not None else None
    cards = scorecards(read_results(*results), drift_rows, source, target, shots)
    if as_json:
        print_json([card.as_dict() for card in cards])
        return
    for card in cards:
        rows = [[f.claim, f.reference, f.expect, format_value(f.paper, f.expect != "rank 1"),
                 format_value(f.measured, f.expect != "rank 1"),
                 {True: "yes", False: "NO", None: "not measured"}[f.held]] for f in card.findings]
        counts = card.counts
        print_table(escape(f"{card.source} -> {card.target}, {card.shots} shots, against the paper's "
                           f"{card.paper_table}: {counts['held']} held, {counts['not_held']} not, "
                           f"{counts['not_measured']} not measured"),
                    ["finding", "from", "expected", "paper", "measured", "held"],
                    [[escape(str(c)) for c in row] for row in rows])
        tau = card.ranking
        console.print(f"Kendall tau of the method ranking vs the paper ({int(tau.get('methods') or 0)} methods): "
                      f"New {format_value(tau.get('new'), True)}, H {format_value(tau.get('H'), True)}",
                      highlight=False)
        if card.per_dataset:
            print_table("published vs measured, per dataset",
                        ["dataset", "method", "Base paper", "Base", "New paper", "New", "H paper", "H"],
                        [[escape(r["dataset"]), escape(r["method"])]
                         + [f"{r[f'{w}_{k}']:.2f}" for k in ("base", "new", "H") for w in ("paper", "measured")]
                         for r in card.per_dataset])

