"""``upgradebench zoo``: list and build the embedded world's toy models (``UPGRADEBENCH_WORLD`` picks the size)."""

from __future__ import annotations

import typer
from rich.markup import escape

from ..errors import UserError
from ..world.recipes import recipe_table
from ..world.worlds import world_name
from ._common import err_console, print_json, print_table
from ._options import Json

app = typer.Typer(help="The embedded world's toy models: list, build and verify them.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: bool = Json) -> None:
    """List every toy model: recipe summary, whether it is built, its fingerprint (and the world's folder)."""
    from ..world import zoo

    rows = [zoo.model_status(name) for name in recipe_table()]
    if as_json:
        print_json(rows)
        return
    print_table(  # every model's folder is models/<name> of the world: named once, in the title
        f"toy models ({world_name()} world, in {zoo.model_dir('')})",
        ["name", "recipe", "built", "fingerprint"],
        [[r["name"], r["recipe"], _state(r), r["fingerprint"] or ""] for r in rows],
    )
    for r in rows:
        if r["damaged"]:
            err_console.print(f"[bold red]damaged:[/] {escape(r['name'])}: {escape(r['damaged'])} "
                              f"(fix: upgradebench zoo build {escape(r['name'])} --force)", highlight=False)


def _state(row: dict) -> str:
    if row["damaged"]:
        return "DAMAGED"
    if row["stale"]:
        return "stale"
    return "yes" if row["built"] else "no (on demand)" if row["on_demand"] else "no"


@app.command("verify")
def verify(as_json: bool = Json) -> None:
    """Check every built toy model's weights against the fingerprint its build recorded (exit 2 if one is damaged)."""
    from ..world import zoo

    rows = [zoo.model_status(name) for name in recipe_table()]
    report = [{"name": r["name"], "built": r["built"], "damaged": r["damaged"]} for r in rows]
    if as_json:
        print_json(report)
    else:
        print_table(f"toy model weights ({world_name()} world)", ["name", "weights"],
                    [[r["name"], _state(r) if r["built"] else "not built"] for r in rows])
    damaged = [r["name"] for r in rows if r["damaged"]]
    if damaged:
        problems = "; ".join(r["damaged"] for r in rows if r["damaged"])
        raise UserError(f"{len(damaged)} toy model(s) damaged: {problems}.",
                        f"rebuild them: upgradebench zoo build {' '.join(damaged)} --force")


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
