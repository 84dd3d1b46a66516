"""Options shared by several commands, their checks (``--workers`` capped to the cores, stdout kept for ``--json``),
and parsing of repeated ``key=value`` options."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import typer

from ..defaults import DEFAULT_SHOTS, DEFAULT_VIEWS
from ..errors import UserError
from ._common import err_console

DataRoot = typer.Option(None, "--data-root", envvar="UPGRADEBENCH_DATA",
                        help="Root of the real datasets in the CoOp layout.")
Device = typer.Option("auto", "--device", help="auto | cpu | cuda")
Force = typer.Option(False, "--force", help="Write into an existing folder that holds other files.")
Json = typer.Option(False, "--json", help="Print JSON instead of a table.")
Precision = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (autocast for the image encoder).")
Download = typer.Option(False, "--download", help="Allow open_clip to download missing weights.")
Shots = typer.Option(DEFAULT_SHOTS, "--shots", "-k", help="Training images per class.")
Views = typer.Option(str(DEFAULT_VIEWS), "--views", help="Cached augmented views per training image, or 'online'.")
Replace = typer.Option(False, "--replace",
                       help="Replace the rows of a model whose weights changed since they were written (default: "
                            "refuse; give the new weights another name to keep both).")


def _cap_workers(value: int | None) -> int | None:
    """``--workers`` above the CPU cores is capped to them (1000 decoding processes on 2 cores would exhaust the
    machine, not speed anything up), with a warning."""
    cores = os.cpu_count() or 1
    if value is not None and value > cores:
        err_console.print(f"warning: --workers {value} is more than the {cores} CPU cores; using {cores}",
                          highlight=False)
        return cores
    return value


Workers = typer.Option(None, "--workers", min=0, callback=_cap_workers,
                       help="Processes that decode images for feature extraction (default: one per CPU core but one, "
                            "at most 16; 0 = decode in the main process; at most the CPU cores).")


@contextlib.contextmanager
def plugin_output_to_stderr(active: bool) -> Iterator[None]:
    """With ``--json`` (``active``), whatever a method's code prints while it is imported or runs goes to stderr, so
    that stdout holds the JSON alone; otherwise nothing changes."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


Mappers = typer.Option(None, "--mapper", metavar="NAME[:key=value,...]",
                       help="Also carry the module to each target with this mapper (see `upgradebench mappers list`), "
                            "e.g. vocab-map, feature-map, 'retune:shots=8,steps=20', 'vocab-map:via=toy-eva'; "
                            "repeatable.")


def parse_mappers(values: list[str] | None) -> list[tuple[str, dict[str, str]]]:
    """``["retune:shots=8,steps=20", "vocab-map"]`` -> ``[("retune", {"shots": "8", "steps": "20"}), ("vocab-map",
    {})]`` (``--mapper``), with an error naming the bad item."""
    out: list[tuple[str, dict[str, str]]] = []
    for item in values or []:
        name, _, settings = item.partition(":")
        name = name.strip()
        if not name:
            raise UserError(f"--mapper expects NAME or NAME:key=value,..., got {item!r}.",
                            "e.g. --mapper vocab-map or --mapper retune:shots=8")
        request = (name, parse_pairs([s for s in settings.split(",") if s.strip()], f"--mapper {name}"))
        if request not in out:
            out.append(request)
    return out


def parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``, with an error naming the bad item."""
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} expects key=value, got {item!r}.")
        out[key.strip()] = value.strip()
    return out
