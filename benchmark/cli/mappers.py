"""``upgradebench mappers list``: every mapper, its data budget, version and the distribution that supplied it."""

from __future__ import annotations

import typer
from rich.markup import escape

from ._common import err_console, print_json, print_table
from ._options import Json

app = typer.Typer(help="Mappers: how a saved module meets a target (built-in and plugins of the upgradebench.mappers "
                       "entry-point group).", no_args_is_help=True)


@app.command("list")
def list_mappers(as_json: bool = Json) -> None:
    """List the mappers that load, by data budget (none, unlabeled target images, labeled target shots); plugins
    that fail to import are reported and skipped."""
    from ..discovery import available_mappers
    from ..mapping import BUDGETS
    from ._method_catalog import describe

    ok, broken = available_mappers()
    for name, reason in broken.items():
        err_console.print(f"[yellow]warning:[/] {escape(f'mapper {name} skipped: {reason}')}", highlight=False)
    rows = sorted(({"name": e.name, "budget": cls.budget, "origin": e.origin, "origin_version": e.origin_version,
                    "builtin": e.builtin, **describe(cls)} for e, cls in ok),
                  key=lambda r: (BUDGETS.index(r["budget"]), r["name"]))
    if as_json:
        print_json({"mappers": rows, "skipped": broken})
        return
    print_table("mappers", ["name", "budget", "version", "from", "description"],
                [[r["name"], r["budget"], r["version"], f"{r['origin']} {r['origin_version']}", r["description"]]
                 for r in rows])
