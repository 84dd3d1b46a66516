"""Hand-built result rows for tests."""

from __future__ import annotations

import pandas as pd

from upgradebench.results import COLUMNS, IDENTITY_MAPPER


def blank_row(**values) -> dict:
    """A row with every schema column: empty strings, NA where the column's type has no empty value."""
    row = {c: "" if col.dtype == "string" else pd.NA for c, col in COLUMNS.items()}
    row.update(IDENTITY_MAPPER)  # the module unchanged, as every row before mappers
    row.update(values)
    return row


IDENTITY_MAPPER = {"mapper": "identity", "mapper_config": "{}", "mapper_budget": "none", "mapper_shots": 0,
                   "map_seconds": 0.0}
"""The mapper columns (schema 4) of a row whose module reached its model unchanged."""


def mapper_row(**values) -> dict:
    """:func:`blank_row` with the mapper columns of an identity row, ``values`` on top (a mapped row names its
    ``mapper``, ``mapper_config``, ``mapper_budget``, ``mapper_shots`` and ``map_seconds``, role ``mapped``)."""
    return blank_row(**{**IDENTITY_MAPPER, **values})
