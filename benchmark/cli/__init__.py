"""The ``upgradebench`` command line: a typer app with one sub-app per command group.

User mistakes raise :class:`upgradebench.errors.UserError`; :func:`main` prints them as one line plus
the fix, and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
import typer

from ..errors import UserError
from ._common import err_console
from . import datasets
from . import analyze, figures, leaderboard
from . import methods, models, results, run, sweep
from . import zoo

app = typer.Typer(
    name="upgradebench",
    help="Do plug-in modules fine-tuned on one vision-language model still work after an upgrade?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(methods.app, name="methods")
app.add_typer(results.app, name="results")
app.command("run")(run.run)
app.command("eval")(run.evaluate)
app.add_typer(analyze.app, name="analyze")
app.command("figures")(figures.figures)
app.add_typer(leaderboard.app, name="leaderboard")
app.command("sweep")(sweep.sweep)
app.add_typer(zoo.app, name="zoo")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    try:
        rv = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False)
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
