"""``upgradebench figures``: the paper's figures and tables from a results folder (and a drift file)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..guard import output_folder
from ._common import print_json, print_text
from ._options import Force, Json


def figures(
    results: list[Path] = typer.Option(..., "--results", "-r", help="Results folder(s) of runs; repeatable."),
    drift: Path = typer.Option(None, "--drift", help="Drift parquet from `upgradebench analyze drift` (Fig. 2b, 2c)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the PNG/PDF figures and Markdown/LaTeX tables."),
    force: bool = Force,
    as_json: bool = Json,
) -> None:
    """Regenerate Fig. 2a-d, Fig. 4, Tables 2-8, the compatibility table, the Base-vs-New figures, the upgrade
    matrix (when modules were carried by mappers) and the fidelity scorecards from parquet alone; missing inputs
    skip only their item."""
    # imported here: matplotlib is slow to import and only this command needs it
    from upgradebench.analysis.compatibility import write_compatibility
    from upgradebench.analysis.drift import read_drift
    from upgradebench.analysis.fidelity import write_scorecards
    from upgradebench.analysis.figures import write_figures
    from upgradebench.analysis.matrix import write_matrix
    from upgradebench.analysis.tables import write_tables

    from ..metrics import read_ledgers, read_mapped_ledgers
    from ..results import read_results

    folder = output_folder(out, force=force)  # a wrong --out fails before anything is read
    drift_rows = read_drift(drift) if drift is not None else None
    df = read_results(*results)
    ledgers = read_ledgers(*results)
    outputs = write_figures(df, drift_rows, folder, ledgers)
    outputs.extend(write_tables(df, folder))
    outputs.extend(write_compatibility(df, ledgers, folder))
    outputs.extend(write_matrix(df, ledgers, read_mapped_ledgers(*results), folder))
    outputs.extend(write_scorecards(df, drift_rows, folder))
    if as_json:
        print_json(outputs.as_dict())
        return
    for path in outputs.written:
        print_text(f"wrote   {path}")
    for name, reason in outputs.skipped.items():
        print_text(f"skipped {name}: {reason}")
