"""What every command shares: the console, JSON output, tables.

Text printed here may come from files or plugins (method, dataset and model names, configs): the consoles
(:class:`CleanConsole`) and :func:`build_table` pass it through :func:`upgradebench.guard.clean_text`, so no
escape sequence reaches the terminal.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from ..guard import clean_text


class CleanConsole(Console):
    """A rich console whose printed strings lose control characters and escape sequences
    (:func:`~upgradebench.guard.clean_text`): messages, warnings and lines quote names that files and plugins
    chose. Tables are cleaned where they are built (:func:`build_table`)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """:meth:`rich.console.Console.print`, every ``str`` argument cleaned first."""
        super().print(*(clean_text(o) if isinstance(o, str) else o for o in objects), **kwargs)


console = CleanConsole()
err_console = CleanConsole(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def print_text(text: str, err: bool = False) -> None:
    """One line of plain text on stdout (``err``: stderr), never wrapped; paths, labels such as
    ``coop[n_ctx=4]`` and messages are never read as rich markup, and lose any control characters."""
    (err_console if err else console).print(text, markup=False, highlight=False, soft_wrap=True)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN: ``null`` is valid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout (no colour, no wrapping); missing numbers are ``null``, never NaN."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2, default=str, allow_nan=False) + "\n")


def build_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table; cells are text, never markup (a label like ``coop[n_ctx=4]`` stays whole), and never
    control characters (:func:`~upgradebench.guard.clean_text`)."""
    table = Table(title=escape(clean_text(title)), header_style="bold")
    for col in columns:
        table.add_column(escape(clean_text(col)), overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else escape(clean_text(v)) for v in row])
    return table


def fits_console(table: Table, wrapped: bool = False) -> bool:
    """Whether ``table`` fits the terminal (80 columns in a pipe): at its natural width, no cell wrapped, or
    with ``wrapped`` once its cells wrap at spaces, no word broken."""
    # measured without the terminal's bound: rich clamps a table's measure to the width it is given
    measure = console.measure(table, options=console.options.update_width(1 << 16))
    return (measure.minimum if wrapped else measure.maximum) <= console.width


def _capped_widths(low: Sequence[int], high: Sequence[int], room: int) -> list[int]:
    """Column widths within ``room``: each column its ``high`` up to one cap, never under its ``low``; the
    cap is the largest that fits, and what rounding leaves goes to the capped columns."""
    def widths(cap: int) -> list[int]:
        return [min(max(cap, lo), hi) for lo, hi in zip(low, high)]

    cap = max((c for c in range(max(high) + 1) if sum(widths(c)) <= room), default=0)
    out, spare = widths(cap), room - sum(widths(cap))
    for i in range(len(out)):
        if spare > 0 and out[i] < high[i]:
            out[i], spare = out[i] + 1, spare - 1
    return out


def show_table(table: Table) -> None:
    """Print ``table`` on stdout; where it is too wide for the terminal, the narrow columns stay whole, the
    wide ones wrap at spaces, and a word (a name, a number) is broken only where the longest words of all
    columns together are wider than the terminal."""
    # rich narrows the widest columns first but then cuts every column evenly, and so folds short names such
    # as "ViT-B-16-quickgelu" while a description column still has spaces to wrap at
    unbounded = console.options.update_width(1 << 16)
    spans = [[Measurement.get(console, unbounded, c) for c in [col.header, *col.cells]] for col in table.columns]
    longest = [max(m.minimum for m in col) for col in spans]
    natural = [max(m.maximum for m in col) for col in spans]
    room = console.width - (console.measure(table, options=unbounded).maximum - sum(natural))
    if sum(natural) > room:
        low = longest if sum(longest) <= room else [1] * len(longest)
        for column, width in zip(table.columns, _capped_widths(low, natural, room)):
            column.width = width
    console.print(table)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                parts: Sequence[tuple[str, slice]] = ()) -> None:
    """:func:`build_table` printed on stdout by :func:`show_table`.

    ``parts`` (a title suffix and a slice of the columns after the first, each) split the table where its
    words would not fit the terminal whole: one table per part, each repeating the first column.
    """
    table = build_table(title, columns, rows)
    if not parts or fits_console(table, wrapped=True):
        show_table(table)
        return
    for suffix, cols in parts:
        show_table(build_table(title + suffix, [columns[0], *columns[1:][cols]], [[r[0], *r[1:][cols]] for r in rows]))
