"""``upgradebench --help`` and every subcommand's ``--help`` start without torch, open_clip or timm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# In a fresh interpreter: walk the click tree of the app, print every command's --help, and report which of the
# heavy packages ended up imported.
_SCRIPT = r"""
import contextlib, io, json, sys
import typer.main
from upgradebench.cli import app, main

def paths(cmd, prefix):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from paths(sub, prefix + [name])

visited = []
for path in paths(typer.main.get_command(app), []):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main([*path, "--help"])
    assert "Usage" in out.getvalue(), (path, out.getvalue())
    visited.append(" ".join(path))
print(json.dumps({"visited": visited, "heavy": sorted(m for m in ("torch", "open_clip", "timm") if m in sys.modules)}))
"""


def test_help_of_every_command_imports_no_torch() -> None:
    # with --threads set too (UPGRADEBENCH_THREADS): the app's callback handles it before any subcommand's --help
    env = {**os.environ, "UPGRADEBENCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, env=env)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"run", "eval", "sweep", "analyze depth", "zoo build", "models show"} <= set(report["visited"])
    assert report["heavy"] == []


def test_help_reflows_docstring_paragraphs() -> None:
    """A docstring's line breaks are not the terminal's: at any width a help paragraph wraps as one text
    (typer's default rich mode printed each source line as a line of its own)."""
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", "from upgradebench.cli import main; main()", "results", "show", "--help"],
                         capture_output=True, text=True, env=env).stdout
    assert "where the runs have prediction ledgers, mean ± std over seeds" in out, out
