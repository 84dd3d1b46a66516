"""The one parquet store type: round trip, migrations, refusals, and the committed stores read unchanged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from upgradebench.analysis.drift import DRIFT_SCHEMA
from upgradebench.errors import UserError
from upgradebench.ledger import LEDGER_SCHEMA
from upgradebench.results import RESULT_SCHEMA
from upgradebench.store import Column, ParquetSchema

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

# one committed file of each store (a row file and its ledger, the drift table)
COMMITTED = {
    # a row file of the current schema (older ones are migrated on read, so they do not read unchanged)
    "result": sorted((RESULTS / "runs").glob("*/*@*.parquet"))[0],
    "ledger": sorted((RESULTS / "runs").glob("*/ledger/*.parquet"))[0],
    "drift": RESULTS / "analysis" / "drift.parquet",
}
SCHEMAS = {"result": RESULT_SCHEMA, "ledger": LEDGER_SCHEMA, "drift": DRIFT_SCHEMA}


def _schema(version: int = 2, migrations=None, arrow: bool = False) -> ParquetSchema:
    columns = {"v": Column("int64", "version", pa.int64() if arrow else None),
               "name": Column("string", "a name", pa.dictionary(pa.int8(), pa.string()) if arrow else None),
               "score": Column("float32", "a score", pa.float32() if arrow else None),
               "n": Column("Int64", "a count, NA when unknown", pa.int64() if arrow else None)}
    return ParquetSchema(name="toy", version=version, version_column="v", columns=columns, noun="toy file",
                         source_fix="pass a toy file", damaged_fix="rewrite the toy file",
                         migrations=migrations or {}, compression="zstd" if arrow else "snappy")


@pytest.mark.parametrize("arrow", [False, True])
def test_round_trip_keeps_order_types_and_values_and_leaves_no_temp_file(tmp_path, arrow):
    schema = _schema(arrow=arrow)
    frame = pd.DataFrame({"n": [3, None], "score": [0.5, 1.25], "name": ["a", "a"], "v": [2, 2], "extra": [1, 2]})
    path = schema.write(frame, tmp_path / "d" / "t.parquet")
    back = schema.read(path)
    assert list(back.columns) == list(schema.columns) and back.dtypes.astype(str).tolist() == [
        "int64", "string", "float32", "Int64"]
    assert back.name.tolist() == ["a", "a"] and back.score.tolist() == [0.5, 1.25] and back.n.isna().tolist() == [
        False, True]
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["t.parquet"]
    if arrow:  # the declared arrow types are what the file holds, with nothing pandas-specific beside them
        file_schema = pq.read_schema(path)
        assert file_schema.remove_metadata().equals(schema.arrow_schema) and file_schema.metadata is None


def test_an_older_file_is_migrated_step_by_step_and_a_gap_is_refused(tmp_path):
    pd.DataFrame({"v": [0], "name": ["a"], "score": [1.0]}).to_parquet(tmp_path / "old.parquet")
    migrations = {0: lambda df: df.assign(v=1, n=pd.NA), 1: lambda df: df.assign(v=2, score=df.score * 2)}
    back = _schema(migrations=migrations).read(tmp_path / "old.parquet")
    assert back.v.tolist() == [2] and back.score.tolist() == [2.0] and back.n.isna().all()
    with pytest.raises(UserError, match="toy schema 0 and no migration to 2") as info:
        _schema(migrations={1: migrations[1]}).read(tmp_path / "old.parquet")
    assert info.value.fix == "pass a toy file"


@pytest.mark.parametrize("store", sorted(SCHEMAS))
def test_a_version_newer_than_the_code_is_refused_with_its_fix(tmp_path, store):
    schema = SCHEMAS[store]
    raw = pq.read_table(COMMITTED[store])
    column = raw.schema.get_field_index(schema.version_column)
    newer = pa.array([schema.version + 1] * len(raw), raw.schema.field(column).type)
    pq.write_table(raw.set_column(column, schema.version_column, newer), tmp_path / "newer.parquet")
    with pytest.raises(UserError, match=f"{store} schema {schema.version + 1}, newer than this upgradebench") as info:
        schema.read(tmp_path / "newer.parquet")
    assert info.value.fix == "upgrade upgradebench to read it"


def test_rows_of_two_versions_in_one_file_are_refused(tmp_path):
    pd.DataFrame({"v": [1, 2], "name": ["a", "b"], "score": [1.0, 2.0], "n": [1, 2]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(UserError, match=r"mixes toy schema versions \[1, 2\]"):
        _schema(migrations={1: lambda df: df.assign(v=2)}).read(tmp_path / "m.parquet")


def test_foreign_damaged_and_mistyped_files_are_user_errors_naming_the_file(tmp_path):
    schema = _schema()
    pd.DataFrame({"other": [1]}).to_parquet(tmp_path / "foreign.parquet")
    with pytest.raises(UserError, match="foreign.parquet is not an upgradebench toy file .missing columns: v, name"):
        schema.read(tmp_path / "foreign.parquet")
    (tmp_path / "damaged.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="damaged.parquet is not a readable parquet file") as info:
        schema.read(tmp_path / "damaged.parquet")
    assert info.value.fix == "rewrite the toy file"
    pd.DataFrame({"v": [2], "name": ["a"], "score": ["high"], "n": [1]}).to_parquet(tmp_path / "typed.parquet")
    with pytest.raises(UserError, match="typed.parquet has a column of the wrong type"):
        schema.read(tmp_path / "typed.parquet")


def test_arrow_types_are_given_for_every_column_or_none():
    with pytest.raises(ValueError, match="every column or for none"):
        ParquetSchema(name="x", version=1, version_column="v", noun="x", source_fix="", damaged_fix="",
                      columns={"v": Column("int64", "", pa.int64()), "w": Column("int64", "")})


@pytest.mark.parametrize("store", sorted(SCHEMAS))
def test_committed_stores_read_unchanged_and_rewrite_to_the_same_file_types(tmp_path, store):
    schema, path = SCHEMAS[store], COMMITTED[store]
    df = schema.read(path)
    raw = pd.read_parquet(path)
    if store == "ledger":  # the dictionary-encoded key columns are read as strings, every other column as stored
        raw = raw.astype({c: "string" for c in ("run_id", "eval_model", "dataset")})
    pd.testing.assert_frame_equal(df, raw, check_exact=True)
    out = schema.write(df, tmp_path / path.name)
    assert pq.read_schema(out).remove_metadata().equals(pq.read_schema(path).remove_metadata())
    pd.testing.assert_frame_equal(schema.read(out), df, check_exact=True)


@pytest.mark.parametrize("arrow", [False, True])
def test_read_many_equals_reading_each_file_and_names_a_bad_one(tmp_path, arrow):
    """Files conformed together (current version, one arrow schema) or one by one (an older version, a file of
    another schema) give what :meth:`read` of each gives, concatenated in the order the files were given; a
    file that cannot be used is named as when read alone."""
    schema = _schema(migrations={1: lambda df: df.assign(v=2, n=pd.NA)}, arrow=arrow)
    current = [schema.write(pd.DataFrame({"v": [2] * k, "name": ["x"] * k, "score": [float(k)] * k, "n": [k] * k}),
                            tmp_path / f"c{k}.parquet") for k in (1, 3, 2)]
    pd.DataFrame({"v": [1], "name": ["old"], "score": [9.0]}).to_parquet(tmp_path / "old.parquet")
    files = [current[0], tmp_path / "old.parquet", current[1], current[2], current[0]]  # one given twice
    many = schema.read_many(files)
    alone = pd.concat([schema.read(f).assign(_file=str(f)) for f in files], ignore_index=True)
    pd.testing.assert_frame_equal(many.drop(columns=["_file", "_version"]), alone.drop(columns="_file"))
    assert many._file.astype(str).tolist() == alone._file.tolist()
    assert many._version.tolist() == [2, 1, 2, 2, 2, 2, 2, 2]

    pd.DataFrame({"v": [2], "name": ["a"], "score": ["high"], "n": [1]}).to_parquet(tmp_path / "typed.parquet")
    with pytest.raises(UserError, match="typed.parquet has a column of the wrong type"):
        schema.read_many([*current, tmp_path / "typed.parquet"])
    (tmp_path / "damaged.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="damaged.parquet is not a readable parquet file"):
        schema.read_many([current[0], tmp_path / "damaged.parquet"])
