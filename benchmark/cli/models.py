"""``upgradebench models``: list the model aliases and show where a model's weights come from."""

from __future__ import annotations

import typer

from ._common import print_json, print_table

app = typer.Typer(help="Model aliases and where their weights come from.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List every model alias (real models and the embedded world's) and the upgrades the project knows between
    them, each with its kind (what the target inherits from the source)."""
    from ..models import alias_names, describe_model
    from ..models.upgrades import known_upgrades

    upgrades = [u.to_dict() for u in known_upgrades()]
    rows = [{**describe_model(name), "upgrades": [u for u in upgrades if u["source"] == name]}
            for name in alias_names()]
    if as_json:
        print_json(rows)
        return
    print_table(
        "model aliases",
        # the arch and its tag on two lines of one cell: the longest of each fits 80 columns without a name broken
        ["alias", "arch / pretrained", "on disk"],
        [[r["alias"], f"{r['arch']}\n{r['pretrained'] or '(' + r['kind'] + ')'}", "yes" if r["present"] else "no"]
         for r in rows],
    )
    print_table(
        "known upgrades (models/upgrades.json)",
        ["source -> target", "kind", "text width"],
        [[f"{u['source']} ->\n{u['target']}", u["title"], "{} -> {}".format(*u["text_width"])] for u in upgrades],
    )


@app.command("show")
def show_model(
    name: str = typer.Argument(..., help="Alias, open_clip:ARCH/TAG, hf-hub:ORG/REPO or local-dir:PATH."),
    pretrained: str = typer.Option(None, "--pretrained", help="Local weights file to use instead of the tag."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one model: architecture, tag, QuickGELU, where weights would come from and whether they are present."""
    from ..models import describe_model

    info = describe_model(name, pretrained)
    if as_json:
        print_json(info)
        return
    info = dict(info)
    searched = info.pop("searched", [])
    print_table(f"model {name}", ["field", "value"], [[k, v] for k, v in info.items()] +
                [["searched", "\n".join(searched)]])

