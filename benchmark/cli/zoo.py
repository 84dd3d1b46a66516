"""``upgradebench zoo``: list, install, verify and rebuild the embedded world's toy models (``UPGRADEBENCH_WORLD``
picks the size)."""

from __future__ import annotations

import typer
from rich.markup import escape

from ..errors import UserError
from ..world.recipes import recipe_table
from ..world.worlds import world_name
from ._common import err_console, print_json, print_table, print_text
from ._options import Json

app = typer.Typer(help="The embedded world's toy models: list, install, verify and rebuild them.", no_args_is_help=True)


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
    if row["built"]:
        return "yes"
    when = "when first used" + (" (on demand)" if row["on_demand"] else "")
    return f"no: ships, installed {when}" if row["ships"] else f"no: built {when}"


@app.command("verify")
def verify(as_json: bool = Json) -> None:
    """Check every installed or built toy model's weights against the fingerprint recorded for them (for a shipped
    model, the shipped weights' fingerprint); exit 2 if one is damaged."""
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
        shipped = [r["name"] for r in rows if r["damaged"] and r["ships"]]
        built = [name for name in damaged if name not in shipped]
        fixes = ([f"upgradebench zoo install {' '.join(shipped)} --force"] if shipped else []) + \
                ([f"upgradebench zoo build {' '.join(built)} --force"] if built else [])
        raise UserError(f"{len(damaged)} toy model(s) damaged: {problems}.", f"restore them: {'; '.join(fixes)}")


@app.command("install")
def install(
    names: list[str] = typer.Argument(None, help="Toy models to install (default: the default build's)."),
    force: bool = typer.Option(False, "--force", help="Install again even when present (repairs a damaged copy)."),
    as_json: bool = Json,
) -> None:
    """Install the shipped weights of toy models now (first use does it anyway; seconds, no training)."""
    from ..world import zoo

    for name in names or []:
        zoo.recipe(name)
    zoo.install_models(names or None, force=force)
    list_models(as_json)


@app.command("build")
def build(
    names: list[str] = typer.Argument(None, help="Toy models to build (default: all); ancestors are built too."),
    force: bool = typer.Option(False, "--force", help="Rebuild the named models even when they are current."),
    as_json: bool = Json,
) -> None:
    """Train toy models from their recipes. A model whose weights ship is retrained beside the shipped one
    (world/<size>/rebuilt/) and compared with it: bit for bit, or the largest difference (the shipped weights
    stay in use). Models that do not ship (the micro world, an edited recipe) are trained where missing or stale."""
    from ..world import zoo

    for name in names or []:
        zoo.recipe(name)  # an unknown name fails here with "did you mean", before any work
    wanted = names or zoo.default_models()
    shipped = [n for n in wanted if zoo.ships(n)]
    if not shipped:
        zoo.build_models(names or None, force=force)
        list_models(as_json)
        return
    if len(shipped) < len(wanted):
        zoo.build_models([n for n in wanted if n not in shipped], force=force)
    report = zoo.rebuild_and_compare(shipped)
    if as_json:
        print_json(report)
        return
    print_table(f"rebuilt from recipes vs shipped weights ({world_name()} world, this machine)",
                ["name", "reproduces the shipped weights", "rebuilt in"],
                [[r["name"], _verdict(r), r["path"]] for r in report])


def _verdict(row: dict) -> str:
    if row["identical"]:
        return "yes, bit for bit"
    if row["max_abs_diff"] is None:
        return f"no: {row['tensor']}"
    return f"no: largest difference {row['max_abs_diff']:.3g} ({row['tensor']})"


@app.command("pack")
def pack(names: list[str] = typer.Argument(None, help="Built toy models to pack (default: every built one).")) -> None:
    """For maintainers: write built toy models into the package's shipped weights (then commit them), and remove
    shards no model lists any more. Pack only after a full rebuild of the world from its recipes."""
    from ..world import shipped, zoo

    names = names or [n for n in recipe_table() if zoo.is_built(n)]
    for name in names:
        if not zoo.is_built(name):
            raise UserError(f"Toy model {name!r} is not built for its current recipe.",
                            f"upgradebench zoo build {name}")
        record = shipped.pack(zoo.model_dir(name), world_name())
        mb = sum(s["bytes"] for s in record["shards"]) / 1e6
        print_text(f"packed {name}: {len(record['shards'])} shards, {mb:.1f} MB, "
                   f"{record['token_table']['stored_rows']} token rows stored")
    for path in shipped.prune(world_name()):
        print_text(f"removed unused shard {path}")
