"""``upgradebench zoo``: list and build the embedded world's toy models (``UPGRADEBENCH_WORLD`` picks the size)."""

from __future__ import annotations

import typer

from ..world.recipes import recipe_table
from ..world.worlds import world_name
from ._common import print_json, print_table
from ._options import Json

app = typer.Typer(help="The embedded world's toy models: list them, build them.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: bool = Json) -> None:
    """List every toy model: recipe summary, whether it is built, its fingerprint and folder."""
    from ..world import zoo

    rows = [zoo.model_status(name) for name in recipe_table()]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"toy models ({world_name()} world)",
        ["name", "recipe", "built", "fingerprint", "path"],
        [[r["name"], r["recipe"], "stale" if r["stale"] else ("yes" if r["built"] else "no"), r["fingerprint"] or "",
          r["path"]] for r in rows],
    )


@app.command("build")
def build(
    names: list[str] = typer.Argument(None, help="Toy models to build (default: all); ancestors are built too."),
    force: bool = typer.Option(False, "--force", help="Rebuild the named models even when they are current."),
    as_json: bool = Json,
) -> None:
    """Build toy models that are missing or whose recipe changed (deterministic; cached under UPGRADEBENCH_HOME)."""
    from ..world import zoo

    for name in names or []:
        zoo.recipe(name)  # an unknown name fails here with "did you mean", before any work
    zoo.build_models(names or None, force=force)
    list_models(as_json)
