"""``upgradebench methods list``: every method, its version and the distribution that supplied it."""

from __future__ import annotations

from importlib.metadata import entry_points

import typer
from rich.markup import escape

from ._common import err_console, print_json, print_table
from ._options import Json

app = typer.Typer(help="Methods (built-in and plugins of the upgradebench.methods entry-point group).",
                  no_args_is_help=True)

GROUP = "upgradebench.methods"  # the entry-point group of pyproject.toml (upgradebench.discovery.ENTRY_POINT_GROUP)


@app.command("list")
def list_methods(as_json: bool = Json) -> None:
    """List the methods that load; plugins that fail to import are reported and skipped."""
    rows, broken = _from_catalog() or _from_classes()
    for name, reason in broken.items():
        err_console.print(f"[yellow]warning:[/] {escape(f'method {name} skipped: {reason}')}", highlight=False)
    if as_json:
        print_json({"methods": rows, "skipped": broken})
        return
    print_table("methods", ["name", "version", "from", "description"],
                [[r["name"], r["version"], f"{r['origin']} {r['origin_version']}", r["description"]] for r in rows])


def _row(name: str, origin: str, origin_version: str, builtin: bool, about: dict) -> dict:
    return {"name": name, "version": about["version"], "origin": origin, "origin_version": origin_version,
            "builtin": builtin, "description": about["description"], "config": about["config"]}


def _from_catalog() -> tuple[list[dict], dict[str, str]] | None:
    """The rows from the built-in catalog and the entry points' metadata alone (no import of torch or of a
    method), or None when an entry point is not a built-in the catalog holds as it is installed (a plugin, a
    renamed target), which only importing the classes describes."""
    from ._method_catalog import CATALOG

    rows = []
    for ep in entry_points(group=GROUP):
        about = CATALOG.get(ep.name)
        if ep.dist is None or ep.dist.name != "upgradebench" or about is None or about["target"] != ep.value:
            return None
        rows.append(_row(ep.name, ep.dist.name, ep.dist.version, True, about))
    return sorted(rows, key=lambda r: r["name"]), {}


def _from_classes() -> tuple[list[dict], dict[str, str]]:
    """The rows from the method classes themselves (imports every method)."""
    from ..discovery import available_methods
    from ._method_catalog import describe

    ok, broken = available_methods()
    return [_row(e.name, e.origin, e.origin_version, e.builtin, describe(cls)) for e, cls in ok], broken
