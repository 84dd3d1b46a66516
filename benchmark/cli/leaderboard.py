"""``upgradebench leaderboard build`` and ``check``: the static leaderboard site, and submission checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ..guard import apart_from, output_folder, results_folder
from ..paths import home
from ._common import console, print_json, print_table, print_text
from ._options import DataRoot, Device, Force, Json

app = typer.Typer(help="The static leaderboard site, and checks of submitted results.", no_args_is_help=True)

Against = typer.Option(None, "--against", help="Reference protocol: a reference results folder (cells and "
                       "fingerprints) or a grid (YAML file or paper:NAME; cells only).")
ProtocolGrid = typer.Option(None, "--protocol", metavar="GRID",
                            help="Only the cells of this grid (YAML file or paper:NAME) are the protocol, e.g. the "
                                 "main grid of a reference folder that also holds other studies; fingerprints and "
                                 "method versions still come from the --against / first folder.")
Salt = typer.Option("", "--salt", help="Text mixed into the hash that picks the modules re-evaluated, so that a "
                    "submitter cannot know which ones will be (the sample is otherwise predictable).")


@app.command("build")
def build(
    results: list[Path] = typer.Option(..., "--results", "-r", help="Results folder(s) of runs; repeatable. "
                                       "Without --against the first is the reference protocol."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for index.html and its assets."),
    figures: Path = typer.Option(None, "--figures", help="Folder of PNGs from `upgradebench figures` to include."),
    flips: str = typer.Option(None, "--flips", help="Method label whose per-class flips are shown "
                              "(default: the method with the largest NFR)."),
    against: str = Against,
    protocol_grid: str = ProtocolGrid,
    rescore_on: list[str] = typer.Option(None, "--rescore-on", help="Held-out model every saved module is also "
                                         "evaluated on, without retraining (a column of its own); repeatable."),
    rescored: Path = typer.Option(None, "--rescored", metavar="PATH",
                                  parser=lambda value: results_folder(value, "--rescored"),
                                  help="Folder for the re-scored rows (default: $UPGRADEBENCH_HOME/rescored), apart "
                                       "from the --results folders, which are never written to."),
    verify: bool = typer.Option(False, "--verify", help="Re-evaluate a sample of the modules of every folder "
                                "that is not the reference, as `leaderboard check` does: entries that match are "
                                "verified, those that do not are left out; without it they are marked unverified."),
    salt: str = Salt,
    device: str = Device,
    data_root: Path = DataRoot,
    force: bool = Force,
    as_json: bool = Json,
) -> None:
    """Rank complete, matching entries by average H per source -> target pair; a self-contained page that
    needs no network. Entries that rest on rows no one re-computed (folders other than the reference, unless
    --verify) or that no hash or ledger covers are marked unverified: hashes find damage, not forgery."""
    import os

    from upgradebench.leaderboard.build import build_site, reference_index, unverified_entries, verify_folders
    from upgradebench.leaderboard.rescore import rescore
    from upgradebench.leaderboard.submission import load_protocol, protocol_of, within_grid

    from ..metrics import read_ledgers, read_mapped_ledgers
    from ..results import merge_results, read_results
    from ..runner import Runner, check_writable

    site = output_folder(out, force=force)
    if rescore_on:  # checked before anything is read: re-scored rows never land in a --results folder
        rescored = apart_from(rescored or home() / "rescored", results, "--rescored")
    merged = merge_results(*results)
    ledgers = read_ledgers(*results)
    protocol = load_protocol(against) if against else protocol_of(read_results(results[0]), str(results[0]))
    if protocol_grid:
        protocol = within_grid(protocol, protocol_grid)
    reference = reference_index(results, against)
    recomputed: set[tuple[int, str]] = set()
    rejected: list[dict[str, Any]] = []
    if verify:
        checker = Runner(results=os.devnull, device=device, data_root=data_root)
        merged, recomputed, rejected = verify_folders(merged, results, protocol, reference, checker, salt)
    unverified = unverified_entries(merged, results, ledgers, reference, recomputed)
    rows = None
    if rescore_on:
        check_writable(rescored)
        runner = Runner(results=rescored, device=device, data_root=data_root)
        rows = rescore(list(results), list(rescore_on), rescored, runner)
    written = build_site(merged.rows, site, figures, ledgers, flips, protocol, rows, unverified, rejected,
                         read_mapped_ledgers(*results))
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
    protocol_grid: str = ProtocolGrid,
    every: bool = typer.Option(False, "--all", help="Re-evaluate every saved module, not one per (entry, source, "
                               "dataset, shots)."),
    salt: str = Salt,
    device: str = Device,
    data_root: Path = DataRoot,
    as_json: bool = Json,
) -> None:
    """Check a submitted results folder against the reference protocol; exit 0 only when it is complete,
    matching and verified: every (target, dataset, shots, seed) cell, the reference's fingerprints and method
    versions, every saved module intact, and a sample of the modules (one per entry, source, dataset and shots,
    chosen by a hash of the run id; every one with --all) re-evaluated on the models and datasets here gives the
    rows' top-1 and the ledgers' predictions. Hashes find damage, not forgery: only the re-evaluation finds a
    forged row; rows without a row hash or ledger, and modules without a content hash, are reported unverified."""
    import os

    from upgradebench.leaderboard.submission import check_submission, load_protocol, within_grid

    from ..runner import Runner

    runner = Runner(results=os.devnull, device=device, data_root=data_root)
    protocol = load_protocol(against)
    if protocol_grid:
        protocol = within_grid(protocol, protocol_grid)
    report = check_submission(submission, protocol, runner, every=every, salt=salt)
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
             f"{e['verification']} ({e['recomputed_runs']}/{e['runs']} runs re-computed)",
             "yes" if e["ok"] else "no"] for e in report["entries"]]
    print_table(f"{report['submission']} against {report['reference']}", ["entry", "from", "cells", "verification",
                                                                            "ok"], rows)
    for e in report["entries"]:
        for cells in e["missing_summary"]:  # every cell is in --json's "missing"
            print_text(f"{e['label']}: missing {cells}")
        for command in e["fill"]:
            print_text(f"{e['label']}: to fill: {command}")
        for f in e["foreign_fingerprints"]:
            print_text(f"{e['label']}: {f['kind']} {f['name']} has fingerprint {f['found']}, "
                       f"the reference {f['expected']}")
        for v in e["version_problems"]:
            print_text(f"{e['label']}: {v}")
        for m in e["mismatches"]:
            print_text(f"{e['label']}: MISMATCH run {m['run_id']} on {m['model']} / {m['dataset']}: {m['problem']}")
        for u in e["unverified"][:3]:  # every one is in --json's "unverified"
            print_text(f"{e['label']}: unverified: {u}")
        if len(e["unverified"]) > 3:
            print_text(f"{e['label']}: unverified: {len(e['unverified']) - 3} more (--json lists them)")
    for m in report["module_problems"]:
        print_text(f"{m['label']} {m['run_id']}: {m['problem']}")
    print_text(report["trust"])
    verdict = "[green]complete, matching and verified[/]" if report["ok"] else "[red]not accepted[/] (see above)"
    console.print(f"{escape(str(report['submission']))}: {verdict}", highlight=False, soft_wrap=True)
