"""``upgradebench models``: list the model aliases and show where a model's weights come from."""

from __future__ import annotations

import typer

from ._common import print_json, print_table

app = typer.Typer(help="Model aliases and where their weights come from.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List every model alias (real models and the embedded world's)."""
    from ..models import alias_names, describe_model

    rows = [describe_model(name) for name in alias_names()]
    if as_json:
        print_json(rows)
        return
    print_table(
        "model aliases",
        # QuickGELU is in the arch's name (``-quickgelu``); the table fits 80 columns without a name broken
        ["alias", "kind", "arch", "pretrained", "on disk"],
        [[r["alias"], r["kind"], r["arch"], r["pretrained"] or "", r["present"]] for r in rows],
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

