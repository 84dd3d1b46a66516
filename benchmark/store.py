"""One schema type for every parquet store (result rows, drift, prediction ledgers, and any later one).

A :class:`ParquetSchema` is data: a name, a version and the column that records it, the columns in file
order (each with its pandas type, a description and, where the file's type is chosen rather than inferred,
its arrow type), and the migrations that bring a file of an older version up to date. From that it reads a
file (migrating it, never silently: a version newer than the code is refused with its fix), conforms a frame
to the columns and their types, writes a file atomically, and documents its columns as a Markdown table,
so that a store's code, files and ``results/SCHEMA.md`` cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from .atomic import write_atomic
from .errors import UserError

Migration = Callable[[pd.DataFrame], pd.DataFrame]


class Column(NamedTuple):
    """One column of a store: its pandas type once read, what it means, and its arrow type in the file when
    that is chosen (dictionary-encoded, narrow integers) rather than inferred from the pandas type."""

    dtype: str
    description: str
    arrow: pa.DataType | None = None


@dataclass(frozen=True)
class ParquetSchema:
    """A versioned parquet store: columns (in file order), migrations, conform / read / write, and its docs.

    ``noun`` names a file of the store in messages ("result file"); ``source_fix`` is what to do when a file
    is not one of them, ``damaged_fix`` when it is one but cannot be used (unreadable, wrong types).
    ``migrations`` maps a version to the function that brings a frame of that version to the next one.
    Either every column has an ``arrow`` type (the file is written with exactly those, without pandas
    metadata, and ``compression``) or none has (types inferred from pandas, as ``DataFrame.to_parquet``).
    """

    name: str
    version: int
    version_column: str
    columns: Mapping[str, Column]
    noun: str
    source_fix: str
    damaged_fix: str
    migrations: Mapping[int, Migration] = field(default_factory=dict)
    compression: str = "snappy"

    def __post_init__(self) -> None:
        typed = {c.arrow is not None for c in self.columns.values()}
        if len(typed) > 1:
            raise ValueError(f"{self.name} schema: give an arrow type for every column or for none")

    @property
    def arrow_schema(self) -> pa.Schema | None:
        """The arrow schema files are written with, or ``None`` when it is inferred from the pandas types."""
        if next(iter(self.columns.values())).arrow is None:
            return None
        return pa.schema([(name, c.arrow) for name, c in self.columns.items()])

    def empty(self) -> pd.DataFrame:
        """A frame with no rows and every column in its type."""
        return pd.DataFrame({name: pd.Series(dtype=c.dtype) for name, c in self.columns.items()})

    def version_of(self, df: pd.DataFrame) -> int:
        """The version a frame was written in (the current one for an empty frame or one without the column).

        A frame whose rows disagree on it (files concatenated by hand) is refused: one migration cannot serve
        rows of two versions.
        """
        if self.version_column not in df or not len(df):
            return self.version
        versions = sorted({int(v) for v in df[self.version_column].dropna()})
        if len(versions) > 1:
            raise UserError(f"A {self.noun} mixes {self.name} schema versions {versions}.", self.damaged_fix)
        return versions[0] if versions else self.version

    def conform(self, df: pd.DataFrame, source: str) -> pd.DataFrame:
        """``df`` migrated to the current version, in column order and types; ``source`` names it in errors."""
        version = self.version_of(df)
        if version > self.version:
            raise UserError(f"{source} has {self.name} schema {version}, newer than this upgradebench "
                            f"({self.version}).", "upgrade upgradebench to read it")
        while version < self.version:
            if version not in self.migrations:
                raise UserError(f"{source} has {self.name} schema {version} and no migration to {self.version} "
                                "exists.", self.source_fix)
            df = self.migrations[version](df)
            version += 1
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise UserError(f"{source} is not an upgradebench {self.noun} (missing columns: {', '.join(missing)}).",
                            self.source_fix)
        frame = df[list(self.columns)]
        # only the columns read in another type: astype of a column already in its type costs as much (~5 ms a
        # row file), and a folder of results is a thousand files
        wrong = {name: c.dtype for name, c in self.columns.items() if str(frame[name].dtype) != c.dtype}
        try:
            return frame.astype(wrong) if wrong else frame
        except (ValueError, TypeError) as exc:
            raise UserError(f"{source} has a column of the wrong type ({exc}).", self.damaged_fix) from None

    def read_raw(self, path: str | Path) -> pd.DataFrame:
        """A parquet file as written (not conformed); a damaged or foreign file is a user error naming it."""
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise UserError(f"{path} is not a readable parquet file ({exc}).", self.damaged_fix) from None

    def read(self, path: str | Path) -> pd.DataFrame:
        """A file of this store, migrated to the current version, in column order and types."""
        return self.conform(self.read_raw(path), str(path))

    def read_many(self, paths: Sequence[str | Path]) -> pd.DataFrame:
        """Files of this store as one frame, migrated and conformed, with the ``_file`` each row came from and
        the ``_version`` it was written in.

        Equal to concatenating :meth:`read` of each file, in order, but files of one version that share an arrow
        schema are converted, migrated and conformed together: pandas' per-file cost (~4 ms, ~17 ms with a
        migration) dominates reading a folder of a thousand small files. A group that does not conform is read
        one file at a time, so that an error names its file.
        """
        import pyarrow.parquet as pq

        tables: list[tuple[str, pa.Table]] = []
        for path in map(str, paths):
            try:
                tables.append((path, pq.read_table(path)))
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise UserError(f"{path} is not a readable parquet file ({exc}).", self.damaged_fix) from None
        groups: dict[pa.Schema, list[int]] = {}
        for i, (_, table) in enumerate(tables):
            groups.setdefault(table.schema, []).append(i)
        parts = []
        for members in groups.values():
            frame = self._conformed_group([tables[i] for i in members])
            if frame is not None:
                parts.append(frame.assign(_order=np.repeat(members, [tables[i][1].num_rows for i in members])))
                continue
            for i in members:
                path = tables[i][0]
                raw = self.read_raw(path)
                parts.append(self.conform(raw, path).assign(_file=path, _version=self.version_of(raw), _order=i))
        if not parts:
            return self.empty().assign(_file=pd.Series(dtype="str"), _version=pd.Series(dtype="int64"))
        frame = pd.concat(parts, ignore_index=True)
        return frame.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)

    def _conformed_group(self, group: list[tuple[str, pa.Table]]) -> pd.DataFrame | None:
        """Files of one arrow schema conformed together, or None when they must be read one by one."""
        import pyarrow.compute as pc

        if self.version_column not in group[0][1].schema.names:
            return None
        table = pa.concat_tables([t for _, t in group])
        versions = pc.unique(table.column(self.version_column)).to_pylist()
        if len(versions) != 1 or not isinstance(versions[0], int) or not 1 <= versions[0] <= self.version:
            return None
        try:  # migrations are frame-level, so files of one older version migrate together too
            frame = self.conform(table.to_pandas(), f"{len(group)} files").reset_index(drop=True)
        except UserError:
            return None
        code = {path: i for i, path in enumerate(dict.fromkeys(path for path, _ in group))}  # a file given twice
        files = pd.Categorical.from_codes(np.repeat([code[path] for path, _ in group], [t.num_rows for _, t in group]),
                                          list(code))
        return frame.assign(_file=files, _version=versions[0])

    def write(self, df: pd.DataFrame, path: str | Path) -> Path:
        """Write ``df`` (conformed first) to ``path`` atomically."""
        import pyarrow.parquet as pq

        df = self.conform(df, str(path))
        schema = self.arrow_schema
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        if schema is not None:  # the arrow types are the contract: no pandas metadata to override them on read
            table = table.replace_schema_metadata(None)
        return write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression=self.compression))

    def markdown_table(self) -> list[str]:
        """The columns as Markdown table lines (type: the arrow type when chosen, else the pandas type)."""
        lines = ["| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{name}` | {c.arrow if c.arrow is not None else c.dtype} | {c.description} |"
                  for name, c in self.columns.items()]
        return lines
