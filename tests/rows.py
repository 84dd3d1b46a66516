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

