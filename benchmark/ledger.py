"""The prediction ledger: what a module predicted for every test item of one evaluation.

One parquet file per result row file, in a ``ledger/`` folder beside it, under the same name::

    RESULTS/<run_id>/<eval_model>--<dataset>.parquet            the row (results.py)
    RESULTS/<run_id>/ledger/<eval_model>--<dataset>.parquet     its ledger (this module)

Item ids are the dataset's image references, which do not depend on the model, so the ledgers of the same
run on the source and on a target (or of two methods on the same dataset) pair up item by item. Ledgers live
in their own folder so that a glob over a run's folder (``DIR/*/*.parquet``) reads rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from .errors import UserError
from .roles import MAPPED
from .store import Column, ParquetSchema

LEDGER_VERSION = 1
LEDGER_DIR = "ledger"

# Types are chosen, not inferred: constant columns are dictionary-encoded, so they cost ~nothing per item.
_KEY = pa.dictionary(pa.int8(), pa.string())
LEDGER_COLUMNS: dict[str, Column] = {
    "ledger_version": Column("int8", "version of this ledger schema", pa.int8()),
    "run_id": Column("string", "run of the row this ledger belongs to", _KEY),
    "eval_model": Column("string", "alias of the evaluated model (as in the row)", _KEY),
    "dataset": Column("string", "dataset of the test split (as in the row)", _KEY),
    "item": Column("str", "stable id of the test image (the dataset's image reference; same on every model)",
                   pa.string()),
    "label": Column("int16", "true class index", pa.int16()),
    "pred": Column("int16", "predicted class index (argmax of the logits, first on ties)", pa.int16()),
    "correct": Column("bool", "pred == label", pa.bool_()),
    "margin": Column("float32", "logit of the label minus the largest other logit (> 0 iff correct, bar ties)",
                     pa.float32()),
}

_REWRITE = "delete the ledger and re-run the run to rewrite it (its module is reused, nothing is refitted)"

LEDGER_SCHEMA = ParquetSchema(
    name="ledger", version=LEDGER_VERSION, version_column="ledger_version", columns=LEDGER_COLUMNS,
    noun="ledger", source_fix="pass a ledger written by `upgradebench run`", damaged_fix=_REWRITE,
    compression="zstd")


def ledger_path(row_path: str | Path) -> Path:
    """The ledger file of the result row file ``row_path``."""
    row_path = Path(row_path)
    return row_path.parent / LEDGER_DIR / row_path.name


def is_ledger_file(path: Path) -> bool:
    """Whether ``path`` (a parquet file inside a results folder) is a ledger rather than a row file."""
    return path.parent.name == LEDGER_DIR


MAPPED_MARK = "@"
"""What separates a mapped row's file name from its mapper label: ``<model>--<dataset>@<label>.parquet``."""


def mapped_label(path: Path) -> str:
    """The mapper label of a row or ledger file of a mapped row (``<model>--<dataset>@<label>``), or "" for a file
    of the module unchanged (identity)."""
    return path.stem.partition(MAPPED_MARK)[2]


def top1_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent, computed exactly as rows of every schema version store it."""
    return float((logits.argmax(-1).cpu() == labels).float().mean() * 100)


def predictions(logits: torch.Tensor, labels: torch.Tensor, items: list[str]) -> pd.DataFrame:
    """Per-item predictions of one evaluation: item, label, pred, correct and the true-class margin."""
    logits = logits.detach().float().cpu()
    pred = logits.argmax(-1)
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).max(-1).values
    return pd.DataFrame({"item": items, "label": labels.numpy().astype("int16"), "pred": pred.numpy().astype("int16"),
                         "correct": (pred == labels).numpy(), "margin": (true - others).numpy().astype("float32")})


def write_ledger(preds: pd.DataFrame, path: str | Path, run_id: str, eval_model: str, dataset: str) -> Path:
    """Write one evaluation's predictions atomically, with the keys that join it to its row."""
    frame = preds.assign(ledger_version=LEDGER_VERSION, run_id=run_id, eval_model=eval_model, dataset=dataset)
    return LEDGER_SCHEMA.write(frame, path)


def read_ledger(path: str | Path, n_test: int | None = None, top1: float | None = None) -> pd.DataFrame:
    """A ledger file, checked against its row (number of items, accuracy) when those are given."""
    path = Path(path)
    df = LEDGER_SCHEMA.read(path)
    _check_consistent(df, pd.Series(str(path), index=df.index))
    if n_test is not None and len(df) != n_test:
        raise UserError(f"{path} holds {len(df)} items but its row says n_test={n_test}.", _REWRITE)
    if top1 is not None and len(df) and not agrees(100 * df.correct.mean(), top1):
        raise UserError(f"{path} gives top-1 {100 * df.correct.mean():.4f} but its row says {top1:.4f}.", _REWRITE)
    return df


TOP1_TOLERANCE = 1e-3
"""How far (percentage points) a row's top-1 may be from its ledger's: float rounding, never one item."""


def agrees(ledger_top1: Any, row_top1: Any) -> Any:
    """Whether a ledger's (or a re-computed) top-1 gives its row's (element-wise on arrays): a NaN or infinite top-1
    never does (``|NaN - x| > tol`` is False, so the test is written as the agreement, not the difference)."""
    return abs(ledger_top1 - row_top1) <= TOP1_TOLERANCE


def _check_consistent(df: pd.DataFrame, files: pd.Series) -> None:
    """Every item's ``correct`` is ``pred == label``; else a user error naming the first ledger file that is not."""
    bad = df.correct != (df.pred == df.label)
    if bad.any():
        raise UserError(f"{files[bad].iloc[0]} has items whose 'correct' disagrees with 'pred' == 'label' (an "
                        "edited ledger).", _REWRITE)


def read_ledger_files(paths: Sequence[str | Path], labelled: bool = False) -> dict[tuple[str, ...], pd.DataFrame]:
    """Ledger files by ``(run_id, eval_model, dataset)`` (``labelled``: by ``(run_id, eval_model, dataset, mapper
    label)``, the key of a mapped row's ledger: :func:`mapped_label`), each sorted by item and checked against
    itself; read together (:meth:`ParquetSchema.read_many`). A file given twice is read once, and of two files
    with the same key and the same predictions (a folder read through two paths) one is kept; two files with the
    same key and other predictions are a user error naming both: neither may silently win."""
    first: dict[Path, str | Path] = {}
    for path in paths:
        first.setdefault(Path(path).resolve(), path)
    frame = LEDGER_SCHEMA.read_many(list(first.values()))
    _check_consistent(frame, frame["_file"])
    out: dict[tuple[str, ...], pd.DataFrame] = {}
    where: dict[tuple[str, ...], str] = {}
    for file, df in frame.drop(columns="_version").groupby("_file", sort=False, observed=True):
        key: tuple[str, ...] = (str(df.run_id.iloc[0]), str(df.eval_model.iloc[0]), str(df.dataset.iloc[0]))
        if labelled:
            key = (*key, mapped_label(Path(str(file))))
        df = df.drop(columns="_file").sort_values("item", kind="stable").reset_index(drop=True)
        if key in out:
            if not _same_predictions(out[key], df):
                raise UserError(f"{where[key]} and {file} are both the prediction ledger of run {key[0]} on "
                                f"{key[1]} / {key[2]}, with different predictions.",
                                "keep the one written by the run (RESULTS/<run_id>/ledger/) and delete the other")
            continue
        out[key], where[key] = df, str(file)
    return out


def _same_predictions(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two ledgers (sorted by item) hold the same items, labels and predictions."""
    columns = ["item", "label", "pred"]
    return len(a) == len(b) and a[columns].reset_index(drop=True).equals(b[columns].reset_index(drop=True))


def check_against_rows(ledgers: dict[tuple[str, str, str], pd.DataFrame], rows: pd.DataFrame) -> None:
    """Every ledger keyed ``(run_id, eval_model, dataset)`` holds its row's number of items and gives its top-1.

    Rows carry a content hash (``row_hash``), so this ties each ledger to a checked row: a ledger edited, or
    copied in from another evaluation, is reported instead of feeding the ledger metrics.
    """
    keys = ["run_id", "eval_model", "dataset"]
    rows = rows[rows.role != MAPPED]  # a mapped row's ledger has a key of its own (read_ledger_files(labelled=True))
    found = pd.DataFrame([(*key, len(ledger), 100 * ledger.correct.mean()) for key, ledger in ledgers.items()],
                         columns=[*keys, "items", "ledger_top1"])
    # one vectorised join: ledgers without a row among ``rows`` (filtered out by the caller) are not checked
    joined = found.merge(rows[[*keys, "n_test", "top1"]].drop_duplicates(keys), on=keys, sort=False)
    wrong_n = joined.n_test.notna() & (joined["items"] != joined.n_test)
    wrong_top1 = ~agrees(joined.ledger_top1.astype(float), joined.top1.astype(float))
    for r in joined[wrong_n | wrong_top1].head(1).itertuples():
        what = f"The prediction ledger of run {r.run_id} on {r.eval_model} / {r.dataset}"
        if wrong_n[r.Index]:
            raise UserError(f"{what} holds {r.items} items but its row says n_test={int(r.n_test)}.", _REWRITE)
        raise UserError(f"{what} gives top-1 {r.ledger_top1:.4f} but its row says {float(r.top1):.4f}.", _REWRITE)


def ledger_markdown() -> str:
    """The ledger section of ``results/SCHEMA.md``."""
    lines = [
        "## Prediction ledger",
        "",
        f"Ledger version **{LEDGER_VERSION}**. Every row file `RESULTS/<run_id>/<eval_model>--<dataset>.parquet` has",
        "a ledger `RESULTS/<run_id>/ledger/<eval_model>--<dataset>.parquet`: one row per test item (written",
        "atomically, zstd-compressed; `upgradebench.ledger`). `item` is the dataset's image reference, the same",
        "on every model, so ledgers of one run on the source and on a target pair up item by item. Rows of",
        "schema 1 have no ledger; metrics that need one are reported as missing, never as zero. A ledger has",
        "no hash of its own: whenever metrics read it, it is checked against its row (item count and top-1; the",
        "row carries `row_hash`) and against itself (`correct` equals `pred == label`). A row of role `mapped`",
        "(`<eval_model>--<dataset>@<mapper label>.parquet`) has its ledger under the same name.",
        "",
        *LEDGER_SCHEMA.markdown_table(),
    ]
    lines += ["", "With DuckDB, rows and ledgers are two globs (their columns differ):", "",
              "```sql",
              "SELECT * FROM read_parquet('DIR/*/*.parquet', union_by_name = true);   -- rows (schemas 1 and 2)",
              "SELECT * FROM read_parquet('DIR/*/ledger/*.parquet');                 -- ledgers",
              "```"]
    return "\n".join(lines) + "\n"
