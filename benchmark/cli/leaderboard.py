"""``upgradebench leaderboard build``: the static leaderboard site from a results folder."""

from __future__ import annotations

from pathlib import Path

import typer

from upgradebench.leaderboard.build import build_site

from ..metrics import read_ledgers
from ..results import read_results
from ._common import console, output_folder, print_json
from ._options import Force, Json

app = typer.Typer(help="The static leaderboard site.", no_args_is_help=True)


@app.command("build")
def build(
    results: list[Path] = typer.Option(..., "--results", "-r", help="Results folder(s) of runs; repeatable."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for index.html and its assets."),
    figures: Path = typer.Option(None, "--figures", help="Folder of PNGs from `upgradebench figures` to include."),
    flips: str = typer.Option(None, "--flips", help="Method label whose per-class flips are shown "
                              "(default: the method with the largest NFR)."),
    force: bool = Force,
    as_json: bool = Json,
) -> None:
    """Rank methods by average H per source -> target pair; a self-contained page that needs no network."""
    df = read_results(*results)
    out = output_folder(out, force=force)
    written = build_site(df, out, figures, read_ledgers(*results), flips)
    if as_json:
        print_json({"index": str(written[0]), "written": [str(p) for p in written]})
        return
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    console.print(f"open file://{written[0].resolve()}", highlight=False, soft_wrap=True)
