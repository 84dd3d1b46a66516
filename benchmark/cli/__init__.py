"""The ``upgradebench`` command line: a typer app with one sub-app per command group.

User mistakes raise :class:`upgradebench.errors.UserError`; :func:`main` prints them as one line plus
the fix, and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Sequence

import click
import typer
from rich.markup import escape

from ..errors import UserError
from . import (
    analyze,
    cache,
    datasets,
    features,
    fidelity,
    figures,
    leaderboard,
    mappers,
    methods,
    models,
    results,
    run,
    sweep,
    zoo,
)
from ._common import err_console

app = typer.Typer(
    name="upgradebench",
    help="Do plug-in modules fine-tuned on one vision-language model still work after an upgrade?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # markdown: a docstring's paragraphs wrap to the terminal (typer's rich mode keeps every source line break)
    rich_markup_mode="markdown",
)


def default_threads() -> int:
    """Threads torch uses when neither ``--threads`` nor ``OMP_NUM_THREADS`` says: half the cores. The embedded
    world's models are tiny, so a second thread gains little on a quiet machine and, on a shared one whose other
    core is busy, every parallel region waits for the slower thread (docs/performance.md, "Threads")."""
    return max(1, (os.cpu_count() or 1) // 2)


@app.callback()
def _options(
    threads: int = typer.Option(None, "--threads", envvar="UPGRADEBENCH_THREADS", min=1,
                                help="CPU threads torch may use (default: OMP_NUM_THREADS if set, else half the "
                                     "CPU cores). On a small, busy CPU machine 1 is often the fastest for the "
                                     "embedded world's tiny models."),
) -> None:
    if threads:
        cores = os.cpu_count() or 1
        if threads > cores:  # more threads than cores only adds contention (and 100000 exhausts the machine)
            err_console.print(f"warning: --threads {threads} is more than the {cores} CPU cores; using {cores}",
                              highlight=False)
            threads = cores
    elif "OMP_NUM_THREADS" not in os.environ:
        threads = default_threads()
    if threads:
        # torch takes its thread count from OMP_NUM_THREADS when it is first imported, so the option costs no
        # torch import (a subcommand's --help runs this callback too); an already imported torch is told directly
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(methods.app, name="methods")
app.add_typer(mappers.app, name="mappers")
app.add_typer(results.app, name="results")
app.command("run")(run.run)
app.command("eval")(run.evaluate)
app.command("features")(features.features)
app.add_typer(analyze.app, name="analyze")
app.command("figures")(figures.figures)
app.command("fidelity")(fidelity.fidelity)
app.add_typer(leaderboard.app, name="leaderboard")
app.command("sweep")(sweep.sweep)
app.add_typer(zoo.app, name="zoo")
app.add_typer(cache.app, name="cache")


# Recent typer releases vendor click (``typer._click``): their parse errors derive from ``typer.TyperException``,
# not from ``click.ClickException``, so both families are caught.
_PARSE_ERRORS = (click.exceptions.ClickException, typer.TyperException)


# a full disk, a quota or a read-only folder under the results or the home: the user's to fix, not a bug
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


class _Warnings(logging.Handler):
    """Prints upgradebench's warnings (a damaged cache rebuilt, fewer images than K, overlapping folders) on
    stderr as ``warning: ...`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False)


def _show_warnings() -> None:
    logger = logging.getLogger("upgradebench")
    if not any(isinstance(h, _Warnings) for h in logger.handlers):
        logger.addHandler(_Warnings(logging.WARNING))
    if not logging.root.handlers:
        # the handler a library's bare logging.info() would install (open_clip's do), minus upgradebench's own
        # records, which the handler above prints: without it each warning is printed twice
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        handler.addFilter(lambda record: not record.name.startswith("upgradebench"))
        logging.root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    _show_warnings()
    try:
        rv = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except UserError as exc:
        # messages quote user input (names, paths): escaped, so that "[...]" in them is printed, not parsed
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise  # anything else is a bug, and its traceback is what a report needs
        where = f" ({exc.filename})" if exc.filename else ""
        err_console.print(f"[bold red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}", highlight=False)
        err_console.print("[bold]fix:[/] free space there or make it writable, or write elsewhere (--results, --out, "
                          "UPGRADEBENCH_HOME); finished runs are kept, so the same command resumes", highlight=False)
        sys.exit(2)
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted")
        sys.exit(130)
    except _PARSE_ERRORS as exc:  # bad option values, unknown options: click's usage message, no traceback
        # click's exceptions, and those of the click that recent typer releases vendor, show their usage message;
        # typer's own base class declares no show()
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(rv if isinstance(rv, int) else 0)
