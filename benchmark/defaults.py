"""The default source model, targets and dataset of a run, kept free of heavy imports (the CLI's ``--help`` reads them)."""

from __future__ import annotations

DEFAULT_SOURCE = "toy-clip"
DEFAULT_TARGETS = ("toy-eva",)
DEFAULT_DATASET = "toy-pattern"
