"""What the hostile tests share: the micro run's options, a guard that no model loads, and grid files."""

from __future__ import annotations

from pathlib import Path

import pytest

MICRO_RUN = ["--source", "toy-clip", "--target", "toy-eva", "--dataset", "toy-shape", "--shots", "2", "--views", "2",
             "--workers", "0"]
"""A small run of the embedded world (append ``--method`` and ``--results``)."""


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any model is loaded: options, names and paths are checked first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were validated")
    monkeypatch.setattr("upgradebench.models.load_vlm", refuse)
    monkeypatch.setattr("upgradebench.runner.load_vlm", refuse)


def grid_file(tmp_path: Path, text: str) -> str:
    """``text`` written as ``tmp_path/grid.yaml``; its path."""
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return str(path)
