"""The result schema: documented, versioned, migrated explicitly, written atomically."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from upgradebench.errors import UserError
from upgradebench.results import COLUMNS, MIGRATIONS, SCHEMA_VERSION, read_results, schema_markdown, write_rows

from .rows import blank_row

ROOT = Path(__file__).resolve().parent.parent


def _row(**kw):
    row = blank_row()
    row.update(schema_version=SCHEMA_VERSION, run_id="run", shots=16, seed=1, top1=50.0, n_test=10, fit_seconds=0.0,
               eval_seconds=0.0, role="base")
    row.update(kw)
    return row


def test_schema_document_is_current():
    assert (ROOT / "results" / "SCHEMA.md").read_text() == schema_markdown()


def test_designed_columns_are_all_there():
    design = ("schema_version run_id created_at upgradebench_version git_sha method method_version method_origin "
              "method_config config_hash dataset dataset_fingerprint shots seed source source_fingerprint eval_model "
              "eval_fingerprint role top1 n_test fit_seconds eval_seconds device torch_version open_clip_version")
    assert set(design.split()) <= set(COLUMNS)


def test_round_trip_and_no_leftover_temp_files(tmp_path):
    write_rows([_row(run_id="a")], tmp_path / "x" / "a.parquet")
    df = read_results(tmp_path)
    assert df.run_id.tolist() == ["a"] and list(df.columns) == list(COLUMNS)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["a.parquet"]


def test_newer_schema_is_refused_and_older_is_migrated(tmp_path, monkeypatch):
    pd.DataFrame([_row(schema_version=SCHEMA_VERSION + 1)]).to_parquet(tmp_path / "new.parquet")
    with pytest.raises(UserError, match="newer"):
        read_results(tmp_path / "new.parquet")
    old = _row(schema_version=0)
    del old["views"]
    pd.DataFrame([old]).to_parquet(tmp_path / "old.parquet")
    with pytest.raises(UserError, match="no migration"):
        read_results(tmp_path / "old.parquet")
    monkeypatch.setitem(MIGRATIONS, 0, lambda df: df.assign(views="10", schema_version=1))
    assert read_results(tmp_path / "old.parquet").views.tolist() == ["10"]


def test_foreign_parquet_is_a_clear_error(tmp_path):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "f.parquet")
    with pytest.raises(UserError, match="not an upgradebench result file"):
        read_results(tmp_path)


@pytest.mark.parametrize("column,value", [("top1", 50.01), ("n_test", 11), ("eval_fingerprint", "ffff"),
                                          ("trainable_params", 3)])
def test_row_hash_catches_an_edited_value_of_any_type(tmp_path, column, value):
    path = tmp_path / "a.parquet"
    write_rows([_row(run_id="a", trainable_params=2)], path)
    assert read_results(path).row_hash.str.len().tolist() == [16]
    pd.read_parquet(path).assign(**{column: value}).to_parquet(path, index=False)
    with pytest.raises(UserError, match="row hash"):
        read_results(path)


def test_committed_rows_are_current_and_each_carries_its_own_hash(committed_rows):
    # (schema-2 rows are migrated and rewritten with their hash: tests/test_runner.py)
    df = committed_rows
    assert len(df) and set(df.schema_version) == {SCHEMA_VERSION}
    assert df.row_hash.notna().all() and df.row_hash.nunique() == len(df)


def test_a_schema_3_row_reads_as_the_module_unchanged_and_its_hash_is_still_checked(tmp_path):
    """Rows written before mappers (schema 3, no mapper columns) read as identity rows; their hash, computed on the
    columns they had, still catches an edit."""
    from upgradebench.results import IDENTITY_MAPPER, MAPPER_COLUMNS, row_hashes

    path = tmp_path / "old.parquet"
    write_rows([_row(run_id="a", trainable_params=2)], path)
    current = pd.read_parquet(path)
    old = current.drop(columns=list(MAPPER_COLUMNS)).assign(schema_version=3)
    old["row_hash"] = row_hashes(current, version=3).to_numpy()
    old.to_parquet(path, index=False)
    row = read_results(path).iloc[0]
    assert row.schema_version == SCHEMA_VERSION
    assert {k: row[k] for k in IDENTITY_MAPPER} == IDENTITY_MAPPER
    old.assign(top1=51.0).to_parquet(path, index=False)
    with pytest.raises(UserError, match="row hash"):
        read_results(path)
