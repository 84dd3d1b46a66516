"""Run the CLI in-process the way the console script does, capturing exit code and output."""

from __future__ import annotations

import json

import pytest

from upgradebench.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``upgradebench ARGS`` -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def run_json(capsys, *args: str):
    """``upgradebench ARGS --json`` parsed; fails the test on a non-zero exit."""
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)
