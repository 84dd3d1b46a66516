"""``upgradebench leaderboard build`` and ``check``: the static leaderboard site, and submission checks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..guard import apart_from, output_folder, results_folder
from ..paths import home
from ._common import console, print_json, print_table, print_text
from ._options import DataRoot, Device, Force, Json

app = typer.Typer(help="The static leaderboard site, and checks of submitted results.", no_args_is_help=True)

Against = typer.Option(None, "--against", help="Reference protocol: a reference results folder (cells and "
                       "fingerprints) or a grid (YAML file or paper:NAME; cells only).")


@app.command("build")
def build(
    results: list[Path] = typer.Option(..., "--results", "-r", help="Results folder(s) of runs; repeatable. "
                                       "Without --against the first is the reference protocol."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for index.html and its assets."),
    figures: Path = typer.Option(None, "--figures", help="Folder of PNGs from `upgradebench figures` to include."),
    flips: str = typer.Option(None, "--flips", help="Method label whose per-class flips are shown "
                              "(default: the method with the largest NFR)."),
    against: str = Against,
    rescore_on: list[str] = typer.Option(None, "--rescore-on", help="Held-out model every saved module is also "
                                         "evaluated on, without retraining (a column of its own); repeatable."),
    rescored: Path = typer.Option(None, "--rescored", metavar="PATH",
                                  parser=lambda value: results_folder(value, "--rescored"),
                                  help="Folder for the re-scored rows (default: $UPGRADEBENCH_HOME/rescored), apart "
                                       "from the --results folders, which are never written to."),
    device: str = Device,
    data_root: Path = DataRoot,
    force: bool = Force,
    as_json: bool = Json,
) -> None:
    """Rank complete, matching entries by average H per source -> target pair; a self-contained page that
    needs no network."""
    from upgradebench.leaderboard.build import build_site
    from upgradebench.leaderboard.rescore import rescore
    from upgradebench.leaderboard.submission import load_protocol, protocol_of

    from ..metrics import read_ledgers
    from ..results import read_results
    from ..runner import Runner, check_writable

    out = output_folder(out, force=force)
    if rescore_on:  # checked before anything is read: re-scored rows never land in a --results folder
        rescored = apart_from(rescored or home() / "rescored", results, "--rescored")
    df = read_results(*results)
    protocol = load_protocol(against) if against else protocol_of(read_results(results[0]), str(results[0]))
    rows = None
    if rescore_on:
        check_writable(rescored)
        runner = Runner(results=rescored, device=device, data_root=data_root)
        rows = rescore(list(results), list(rescore_on), rescored, runner)
    written = build_site(df, out, figures, read_ledgers(*results), flips, protocol, rows)
    if as_json:
        print_json({"index": str(written[0]), "written": [str(p) for p in written],
                    "rescored": str(rescored) if rescore_on else None})
        return
    for path in written:
        print_text(f"wrote {path}")
    print_text(f"open file://{written[0].resolve()}")


@app.command("check")
def check(
    submission: Path = typer.Argument(..., help="The submitted results folder."),
    against: str = typer.Option(..., "--against", help=Against.help),
    as_json: bool = Json,
) -> None:
    """Check a submitted results folder against the reference protocol; exit 0 only when it is complete and
    matching: every (target, dataset, shots, seed) cell, the reference's fingerprints and method versions, and
    every saved module intact."""
    from upgradebench.leaderboard.submission import check_submission, load_protocol

    report = check_submission(submission, load_protocol(against))
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if not report["ok"]:
        raise typer.Exit(1)


def _print_report(report: dict) -> None:
    for problem in report["schema_problems"]:
        console.print(f"[red]schema:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    rows = [[e["label"], ", ".join(e["origin"]), f"{e['covered']}/{e['expected']}",
             "yes" if e["complete"] and e["matching"] and e["modules_ok"] else "no"] for e in report["entries"]]
    print_table(f"{report['submission']} against {report['reference']}", ["entry", "from", "cells", "ok"], rows)
    for e in report["entries"]:
        for cells in e["missing_summary"]:  # every cell is in --json's "missing"
            print_text(f"{e['label']}: missing {cells}")
        for f in e["foreign_fingerprints"]:
            print_text(f"{e['label']}: {f['kind']} {f['name']} has fingerprint {f['found']}, the reference {f['expected']}")
        for v in e["version_problems"]:
            print_text(f"{e['label']}: {v}")
    for m in report["module_problems"]:
        print_text(f"{m['label']} {m['run_id']}: {m['problem']}")
    verdict = "[green]complete and matching[/]" if report["ok"] else "[red]not accepted[/] (see above)"
    console.print(f"{escape(str(report['submission']))}: {verdict}", highlight=False, soft_wrap=True)
