"""Every default of a run and of a sweep, in one place, kept free of heavy imports (the CLI's ``--help`` reads them)."""

from __future__ import annotations

DEFAULT_SOURCE = "toy-clip"
DEFAULT_TARGETS = ("toy-eva",)
DEFAULT_DATASET = "toy-pattern"
DEFAULT_SHOTS = 16
DEFAULT_SEED = 1
DEFAULT_SEEDS = (1, 2, 3)  # a sweep's seeds
DEFAULT_VIEWS = 10  # cached augmented views per training image
