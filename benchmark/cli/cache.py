"""``upgradebench cache``: the feature cache's size per model and dataset, and pruning it."""

from __future__ import annotations

import typer

from ..errors import UserError
from ..housekeeping import cache_entries, prune_cache
from ..paths import features_dir
from ._common import err_console, print_json, print_table, print_text
from ._options import Json

app = typer.Typer(help="The feature cache under UPGRADEBENCH_HOME: `cache` shows its size, `cache prune` frees it.",
                  invoke_without_command=True)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}"


@app.callback()
def show(ctx: typer.Context, as_json: bool = Json) -> None:
    """Show the feature cache's size per model and dataset."""
    if ctx.invoked_subcommand is not None:
        return
    entries = cache_entries()
    if as_json:
        print_json({"root": str(features_dir()), "bytes": sum(e.bytes for e in entries),
                    "entries": [e.as_dict() for e in entries]})
        return
    rows = [e.as_dict() for e in entries]
    print_table(f"feature cache {features_dir()} ({_mib(sum(e.bytes for e in entries))} MiB)",
                ["model\nfingerprint", "dataset\nfingerprint", "files", "MiB", "days old"],
                [[f"{r['model']}\n{r['model_fingerprint']}", f"{r['dataset']}\n{r['dataset_fingerprint']}", r["files"],
                  _mib(r["bytes"]), r["days_old"]] for r in rows])


@app.command("prune")
def prune(
    unbuilt: bool = typer.Option(False, "--unbuilt", help="Features of toy models whose fingerprint is no longer "
                                                         "built (their recipe changed and they were rebuilt), and "
                                                         "of toy datasets since redefined (a new world version)."),
    older_than: float = typer.Option(None, "--older-than", min=0,
                                     help="Files last written this many days ago or earlier."),
    everything: bool = typer.Option(False, "--all", help="The whole feature cache."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
    as_json: bool = Json,
) -> None:
    """Remove cached features (they are computed again when needed) and temporary files of killed writes."""
    if not (unbuilt or everything or older_than is not None):
        raise UserError("cache prune needs to be told what to remove.", "pass --unbuilt, --older-than DAYS or --all")
    report = prune_cache(unbuilt, older_than, everything, dry_run)
    if as_json:
        print_json({"removed": [str(p) for p in report.removed], "bytes": report.bytes,
                    "tmp_files": report.tmp_files, "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    for path in report.removed:
        print_text(f"{verb} {path}", err=True)
    err_console.print(f"{verb} {len(report.removed)} cache entries ({_mib(report.bytes)} MiB) and "
                      f"{report.tmp_files} temporary files of killed writes", highlight=False)
