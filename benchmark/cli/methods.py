"""``upgradebench methods list``: every method, its version and the distribution that supplied it."""

from __future__ import annotations

import dataclasses

import typer
from rich.markup import escape

from ._common import err_console, print_json, print_table
from ._options import Json

app = typer.Typer(help="Methods (built-in and plugins of the upgradebench.methods entry-point group).",
                  no_args_is_help=True)


@app.command("list")
def list_methods(as_json: bool = Json) -> None:
    """List the methods that load; plugins that fail to import are reported and skipped."""
    from ..discovery import available_methods

    ok, broken = available_methods()
    rows = [{"name": e.name, "version": cls.version, "origin": e.origin, "origin_version": e.origin_version,
             "builtin": e.builtin, "description": cls.description,
             "config": {f.name: _default(f) for f in dataclasses.fields(cls.Config)}} for e, cls in ok]
    for name, reason in broken.items():
        err_console.print(f"[yellow]warning:[/] {escape(f'method {name} skipped: {reason}')}", highlight=False)
    if as_json:
        print_json({"methods": rows, "skipped": broken})
        return
    print_table("methods", ["name", "version", "from", "description"],
                [[r["name"], r["version"], f"{r['origin']} {r['origin_version']}", r["description"]] for r in rows])


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
