"""The prediction ledger: what a module predicted for every test item of one evaluation.

One parquet file per result row file, in a ``ledger/`` folder beside it, under the same name::

    RESULTS/<run_id>/<eval_model>--<dataset>.parquet            the row (results.py)
    RESULTS/<run_id>/ledger/<eval_model>--<dataset>.parquet     its ledger (this module)

Item ids are the dataset's image references, which do not depend on the model, so the ledgers of the same
run on the source and on a target (or of two methods on the same dataset) pair up item by item. Ledgers live
in their own folder so that a glob over a run's folder (``DIR/*/*.parquet``) reads rows only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .atomic import write_atomic
from .errors import UserError

LEDGER_VERSION = 1
LEDGER_DIR = "ledger"

# name -> (pyarrow type, description). Constant columns are dictionary-encoded, so they cost ~nothing per item.
LEDGER_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "ledger_version": (pa.int8(), "version of this ledger schema"),
    "run_id": (pa.dictionary(pa.int8(), pa.string()), "run of the row this ledger belongs to"),
    "eval_model": (pa.dictionary(pa.int8(), pa.string()), "alias of the evaluated model (as in the row)"),
    "dataset": (pa.dictionary(pa.int8(), pa.string()), "dataset of the test split (as in the row)"),
    "item": (pa.string(), "stable id of the test image (the dataset's image reference; same on every model)"),
    "label": (pa.int16(), "true class index"),
    "pred": (pa.int16(), "predicted class index (argmax of the logits, first on ties)"),
    "correct": (pa.bool_(), "pred == label"),
    "margin": (pa.float32(), "logit of the label minus the largest other logit (> 0 iff correct, bar ties)"),
}
_SCHEMA = pa.schema([(name, dtype) for name, (dtype, _) in LEDGER_COLUMNS.items()])


def ledger_path(row_path: str | Path) -> Path:
    """The ledger file of the result row file ``row_path``."""
    row_path = Path(row_path)
    return row_path.parent / LEDGER_DIR / row_path.name


def is_ledger_file(path: Path) -> bool:
    """Whether ``path`` (a parquet file inside a results folder) is a ledger rather than a row file."""
    return path.parent.name == LEDGER_DIR


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
    n = len(preds)
    table = pa.table({
        "ledger_version": pa.array([LEDGER_VERSION] * n, pa.int8()),
        "run_id": pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), [run_id]),
        "eval_model": pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), [eval_model]),
        "dataset": pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), [dataset]),
        **{c: pa.array(preds[c].to_numpy(), LEDGER_COLUMNS[c][0]) for c in ("item", "label", "pred", "correct", "margin")},
    }, schema=_SCHEMA)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_ledger(path: str | Path, n_test: int | None = None, top1: float | None = None) -> pd.DataFrame:
    """A ledger file, checked against its row (number of items, accuracy) when those are given."""
    path = Path(path)
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path} is not a readable ledger ({exc}).",
                        "delete it and re-run the run (its module is reused, nothing is refitted)") from None
    missing = [c for c in LEDGER_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} is not an upgradebench ledger (missing columns: {', '.join(missing)}).")
    version = int(df.ledger_version.iloc[0]) if len(df) else LEDGER_VERSION
    if version > LEDGER_VERSION:
        raise UserError(f"{path} has ledger schema {version}, newer than this upgradebench ({LEDGER_VERSION}).",
                        "upgrade upgradebench to read it")
    for c in ("run_id", "eval_model", "dataset"):
        df[c] = df[c].astype("string")
    if n_test is not None and len(df) != n_test:
        raise UserError(f"{path} holds {len(df)} items but its row says n_test={n_test}.",
                        "delete the ledger and re-run the run to rewrite it")
    if top1 is not None and len(df) and abs(100 * df.correct.mean() - top1) > 1e-3:
        raise UserError(f"{path} gives top-1 {100 * df.correct.mean():.4f} but its row says {top1:.4f}.",
                        "delete the ledger and re-run the run to rewrite it")
    return df


def ledger_markdown() -> str:
    """The ledger section of ``results/SCHEMA.md``."""
    lines = [
        "## Prediction ledger",
        "",
        f"Ledger version **{LEDGER_VERSION}**. Every row file `RESULTS/<run_id>/<eval_model>--<dataset>.parquet` has",
        "a ledger `RESULTS/<run_id>/ledger/<eval_model>--<dataset>.parquet`: one row per test item (written",
        "atomically, zstd-compressed; `upgradebench.ledger`). `item` is the dataset's image reference, the same",
        "on every model, so ledgers of one run on the source and on a target pair up item by item. Rows of",
        "schema 1 have no ledger; metrics that need one are reported as missing, never as zero.",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {dtype} | {text} |" for name, (dtype, text) in LEDGER_COLUMNS.items()]
    lines += ["", "With DuckDB, rows and ledgers are two globs (their columns differ):", "",
              "```sql",
              "SELECT * FROM read_parquet('DIR/*/*.parquet', union_by_name = true);   -- rows (schemas 1 and 2)",
              "SELECT * FROM read_parquet('DIR/*/ledger/*.parquet');                 -- ledgers",
              "```"]
    return "\n".join(lines) + "\n"
