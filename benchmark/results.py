"""Result rows: the schema (as data), the parquet store, and Base / New / H aggregation.

One row per (run x evaluated model x evaluated dataset). Files are written atomically; reading a folder
reads every ``*.parquet`` under it except the prediction ledgers (``ledger/`` folders, see ``ledger.py``).
Old files are brought to the current schema by explicit migrations (``MIGRATIONS``), never silently; the
reading, conforming, writing and documenting is :class:`~upgradebench.store.ParquetSchema`'s (``RESULT_SCHEMA``).
Every row carries a hash of its other columns (``row_hash``, from schema 3), checked when read: a row that
does not match it is reported with its file, never used. The hash is unkeyed: it finds damage, not forgery
(anyone can recompute it); only re-evaluating the saved module finds a forged row (``leaderboard check``).
Reading overlapping folders (the same folder twice, or one inside another) counts each row once and says so;
reading folders whose runs were made on other weights under one model name keeps them apart and says so.
``results/SCHEMA.md`` documents every column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError
from .guard import check_run_ids, input_files
from .ledger import is_ledger_file, ledger_markdown
from .store import Column, Migration, ParquetSchema

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

# The order is the column order of every file.
COLUMNS: dict[str, Column] = {
    "schema_version": Column("int64", "version of this schema (migrations bring older files up to date)"),
    "run_id": Column("string", "identity of the run: method, variant, dataset, shots, seed, source and a hash of all "
                               "inputs"),
    "created_at": Column("string", "UTC time the row was written, ISO 8601"),
    "upgradebench_version": Column("string", "version of upgradebench that produced the row"),
    "git_sha": Column("string", "git commit of the upgradebench source when run from a checkout, else empty"),
    "method": Column("string", "method name (registry / entry-point name)"),
    "method_version": Column("string", "version declared by the method class"),
    "method_origin": Column("string", "distribution that supplied the method, as name==version"),
    "method_config": Column("string", "the full method config as JSON"),
    "method_variant": Column("string", "config keys that differ from the method's defaults (k=v,...); empty for "
                                       "defaults"),
    "config_hash": Column("string", "hash of (method, method_version, method_config): one per method variant"),
    "dataset": Column("string", "dataset the row's accuracy was measured on"),
    "dataset_fingerprint": Column("string", "fingerprint of that dataset (class names, template, splits)"),
    "train_dataset": Column("string", "dataset the module was fitted on (differs from dataset for OOD rows)"),
    "shots": Column("int64", "K, training images per class"),
    "seed": Column("int64", "seed of the few-shot sample and of training"),
    "views": Column("string", "cached augmented views per training image, or 'online'"),
    "source": Column("string", "alias of the model the module was fitted on"),
    "source_fingerprint": Column("string", "hash of the source weights"),
    "eval_model": Column("string", "alias of the model evaluated in this row"),
    "eval_fingerprint": Column("string", "hash of the evaluated model's weights"),
    "role": Column("string", "'base' (eval_model is the source), 'new' (a target, the module unchanged), 'mapped' (a "
                             "target, the module carried by a mapper other than identity, `run --mapper`), 'oracle' "
                             "(fitted on eval_model itself, `run --oracle`) or 'rescore' (a held-out model, "
                             "`leaderboard build --rescore-on`; written to a folder of its own)"),
    "mapper": Column("string", "the mapper that carried the module to eval_model (`upgradebench mappers list`): "
                               "'identity' (unchanged) for base, new and oracle rows; rows of another mapper have role "
                               "'mapped' (schema 4; older rows: 'identity')"),
    "mapper_config": Column("string", "the mapper's config as JSON ('{}' for identity); a retune records the start "
                                      "it resolved"),
    "mapper_budget": Column("string", "target data the mapper used: 'none', 'unlabeled' (the task's training "
                                      "images, no labels) or 'labeled'"),
    "mapper_shots": Column("int64", "labeled target images per class the mapper used (0 unless budget 'labeled')"),
    "map_seconds": Column("float64", "wall time of mapping the module (fitting maps, re-tuning); 0 for identity"),
    "top1": Column("float64", "top-1 accuracy in percent on the test split"),
    "n_test": Column("int64", "number of test images"),
    "fit_seconds": Column("float64", "wall time of fit (0 when the module was reused)"),
    "trainable_params": Column("Int64", "number of learned values in the saved module (0 for zero-shot); schema 1: NA"),
    "needs_image_encoder": Column("boolean", "whether training ran the image encoder (the method asks for pixels, or "
                                             "--views online) instead of cached features; schema 1: NA"),
    "eval_seconds": Column("float64", "wall time of this evaluation (features + logits)"),
    "device": Column("string", "torch device of the run"),
    "torch_version": Column("string", "torch.__version__"),
    "open_clip_version": Column("string", "open_clip.__version__"),
    "row_hash": Column("string", "hash of every other column of the row, checked when read (schema 3; migrated rows "
                                 "get the hash of their migrated values)"),
}

# a row is counted once when several files give it (overlapping folders): same run, model, dataset and weights
ROW_IDENTITY = ["run_id", "eval_model", "dataset", "role", "mapper", "mapper_config", "source_fingerprint",
                "eval_fingerprint", "dataset_fingerprint"]

MAPPER_COLUMNS = ("mapper", "mapper_config", "mapper_budget", "mapper_shots", "map_seconds")
"""The columns schema 4 added; a row written under schema 3 was hashed without them."""
IDENTITY_MAPPER = {"mapper": "identity", "mapper_config": "{}", "mapper_budget": "none", "mapper_shots": 0,
                   "map_seconds": 0.0}
"""The mapper columns of a row of the module unchanged (every row before schema 4)."""

# schema_version -> function bringing a frame of that version to the next one. A row migrated from before
# schema 3 has no row hash to check: read_results gives it the hash of its migrated values.
MIGRATIONS: dict[int, Migration] = {
    # 1 -> 2: cost columns (unknown for old rows, so NA, never 0) and a prediction ledger beside each row file.
    1: lambda df: df.assign(schema_version=2, trainable_params=pd.NA, needs_image_encoder=pd.NA),
    # 2 -> 3: the row hash, computed from the migrated values (an old row had nothing to check it against).
    2: lambda df: df.assign(schema_version=3, row_hash=pd.NA),
    # 3 -> 4: the mapper columns; every earlier row evaluated the module unchanged. Its row hash, computed without
    # them, is checked against the columns it was computed on (row_hashes(..., version=3)).
    3: lambda df: df.assign(schema_version=4, **IDENTITY_MAPPER),
}

_RESTORE = "restore the file from a copy, or delete its run folder and re-run the run"

RESULT_SCHEMA = ParquetSchema(
    name="result", version=SCHEMA_VERSION, version_column="schema_version", columns=COLUMNS, migrations=MIGRATIONS,
    noun="result file", source_fix="pass a folder of upgradebench result files", damaged_fix=_RESTORE)


def row_hashes(df: pd.DataFrame, version: int = SCHEMA_VERSION) -> pd.Series:
    """The ``row_hash`` of each row of a frame in the current schema: 64-bit hash of every other column, as hex;
    ``version=3`` hashes the columns a schema-3 row was hashed on (the row written then, with its schema_version)."""
    columns = [c for c in COLUMNS if c != "row_hash" and (version >= 4 or c not in MAPPER_COLUMNS)]
    frame = df[columns].assign(schema_version=version) if version < SCHEMA_VERSION else df[columns]
    values = pd.util.hash_pandas_object(frame, index=False)
    return pd.Series([f"{v:016x}" for v in values], index=df.index, dtype="string")



def _verify(df: pd.DataFrame, written: pd.Series, files: pd.Series) -> pd.DataFrame:
    """``df`` (current schema) with every row's hash set to that of its current values; a row written with a hash
    (schema ``written`` >= 3) that does not match it, computed on the columns of its schema, is a user error naming
    its file (``files``)."""
    hashes = row_hashes(df)
    expected = hashes.where(written >= 4, row_hashes(df, version=3)) if (written == 3).any() else hashes
    checked = written >= 3
    bad = checked & (df.row_hash.isna() | (df.row_hash != expected).fillna(True))
    if bad.any():
        f = files[bad].iloc[0]
        raise UserError(f"{f}: {int((files[bad] == f).sum())} rows do not match their row hash (edited or damaged), "
                        f"e.g. run {df.run_id[bad].iloc[0]!r} on {df.eval_model[bad].iloc[0]!r}.", _RESTORE)
    return df.assign(row_hash=hashes)


def has_row_hash(path: str | Path) -> bool:
    """Whether the row file ``path`` has a ``row_hash`` column (schema 3 or later); reads only its schema."""
    import pyarrow.parquet as pq

    return "row_hash" in pq.read_schema(path).names


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write rows to a parquet file atomically, in schema order and types, each with its ``row_hash``."""
    frame = pd.DataFrame(rows)
    if "row_hash" not in frame:
        frame["row_hash"] = pd.NA
    df = RESULT_SCHEMA.conform(frame, str(path))
    return RESULT_SCHEMA.write(df.assign(row_hash=row_hashes(df)), path)


@dataclass
class MergedResults:
    """The rows of one or more results folders (:func:`merge_results`) and what reading them together did.

    ``folder`` (aligned with ``rows``) is the index in the given paths of the folder each row was read from;
    ``hashed`` whether the row carried a ``row_hash`` that was checked (schema 3 and later; an older row was
    migrated and has nothing to check: unverified). ``separated`` lists the runs set apart as entries of their
    own because they were made on other weights than the same model name in an earlier folder, one dict per
    (folder, model, fingerprint): ``folder``, ``model``, ``fingerprint``, ``expected`` (the fingerprints of the
    earlier folder ``expected_folder``), ``runs`` and ``entries`` (the method names they now carry). ``notes``
    says all of it in sentences (also logged as warnings).
    """

    rows: pd.DataFrame
    folder: pd.Series
    hashed: pd.Series
    separated: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_results(*paths: str | Path) -> pd.DataFrame:
    """Every result row under the given folders (or files), migrated to the current schema.

    Rows of schema 3 and later are checked against their ``row_hash``, and a top-1 that is not a number in
    [0, 100] is an error naming its file. A file reached twice (a folder given twice, or one inside another) is
    read once, and a row given by several files (same run, model, dataset and weights: :data:`ROW_IDENTITY`)
    is counted once; both are said in a warning. Two files that disagree on such a row are an error. Runs of a
    later folder made on other weights than an earlier folder's under the same model name are never merged
    with its runs: they become entries of their own, with a warning (:func:`merge_results`).
    """
    return merge_results(*paths).rows


def merge_results(*paths: str | Path) -> MergedResults:
    """:func:`read_results`, with where each row came from and what reading the folders together changed."""
    files: list[Path] = []
    roots: list[int] = []
    seen: set[Path] = set()
    repeated = 0
    for index, root in enumerate(map(Path, paths)):
        if not root.exists():
            raise UserError(f"Results folder {root} does not exist.", "pass the folder given to --results")
        for f in input_files(root, "*.parquet", what="results folder"):
            if f.name.startswith(".") or is_ledger_file(f):
                continue  # a temporary file of an interrupted write, or a prediction ledger
            if f.resolve() in seen:
                repeated += 1
                continue
            seen.add(f.resolve())
            files.append(f)
            roots.append(index)
    if not files:
        empty = RESULT_SCHEMA.empty()
        return MergedResults(empty, pd.Series(dtype="int64"), pd.Series(dtype=bool))
    df = RESULT_SCHEMA.read_many(files)
    written = df.pop("_version")
    checked = written >= 3  # rows from before schema 3 carry no hash to check
    df = _verify(df, written, df["_file"])  # hashed once for every file: a read stays one pass
    _check_top1(df)
    check_run_ids(df.run_id.tolist(), df["_file"].tolist())  # run ids are joined onto folders: names only
    root_of = dict(zip(map(str, files), roots))
    df["_root"] = [root_of[str(f)] for f in df["_file"]]
    df["_hashed"] = checked
    separated = _separate_other_weights(df, [Path(p) for p in paths]) if len(paths) > 1 else []
    notes = [f"{s['folder']}: {s['runs']} run(s) on {s['model']!r} of weights {s['fingerprint']}, not "
             f"{' or '.join(s['expected'])} as in {s['expected_folder']}, are not merged with those: they are the "
             f"entries {', '.join(s['entries'])}" for s in separated]
    identity = [*ROW_IDENTITY, "method"]  # a run set apart keeps its rows beside the same run's on other weights
    dup = df.duplicated(identity, keep="first")
    if dup.any():
        first = df[~dup].set_index(identity)
        for _, row in df[dup].iterrows():
            kept = first.loc[tuple(row[c] for c in identity)]
            if kept["top1"] != row["top1"] or kept["n_test"] != row["n_test"]:
                raise UserError(f"{kept['_file']} and {row['_file']} hold the same row (run {row['run_id']!r} on "
                                f"{row['eval_model']!r}, {row['dataset']}) with different top-1 ({kept['top1']} vs "
                                f"{row['top1']}).", "keep one of the two files; read the folders separately")
    if repeated or dup.any():
        notes.append(f"overlapping results folders: {repeated} files read twice and {int(dup.sum())} rows found in "
                     "several files were counted once (same run, model, dataset and fingerprints)")
    for note in notes:
        log.warning("%s", note)
    df = df[~dup].reset_index(drop=True)
    return MergedResults(df.drop(columns=["_file", "_root", "_hashed"]), df["_root"], df["_hashed"].astype(bool),
                         separated, notes)


def _check_top1(df: pd.DataFrame) -> None:
    """A top-1 that is NaN, infinite or outside [0, 100] is a user error naming its file: a NaN never compares
    unequal to anything, so it would pass every later check and be counted as a seed."""
    top1 = df.top1.astype(float)
    bad = ~top1.between(0.0, 100.0)  # False for NaN
    if bad.any():
        first = df[bad].iloc[0]
        raise UserError(f"{first['_file']}: run {first['run_id']!r} on {first['eval_model']!r} has top-1 "
                        f"{first['top1']} ({int(bad.sum())} such rows): not an accuracy in percent.", _RESTORE)


def _separate_other_weights(df: pd.DataFrame, paths: list[Path]) -> list[dict[str, Any]]:
    """Give the runs of a later folder made on other weights than an earlier folder's under one model name an
    entry of their own (``method@folder``, in place); what was set apart, for :class:`MergedResults`.

    A model name's weights are the fingerprints it has in the first folder (in the order given) that uses it;
    a run of a later folder is set apart when its source or any evaluated model has another fingerprint.
    """
    names = [p.name or str(p) for p in paths]
    tags = [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]
    models = pd.concat([df[["_root", "source", "source_fingerprint"]].set_axis(["root", "model", "fp"], axis=1),
                        df[["_root", "eval_model", "eval_fingerprint"]].set_axis(["root", "model", "fp"], axis=1)])
    home_root = models.groupby("model").root.min()
    home = models[models.root == models.model.map(home_root)].groupby("model").fp.agg(lambda f: sorted(set(f)))
    other_source = [fp not in home[m] for m, fp in zip(df.source, df.source_fingerprint)]
    other_eval = [fp not in home[m] for m, fp in zip(df.eval_model, df.eval_fingerprint)]
    other = pd.Series(other_source, index=df.index) | pd.Series(other_eval, index=df.index)
    if not other.any():
        return []
    runs = df.loc[other, ["_root", "run_id"]].drop_duplicates()
    apart = pd.MultiIndex.from_frame(df[["_root", "run_id"]]).isin(pd.MultiIndex.from_frame(runs))
    out = []
    for (root, model, fp), part in pd.concat([
            df[other_source].assign(model=df.source, fp=df.source_fingerprint),
            df[other_eval].assign(model=df.eval_model, fp=df.eval_fingerprint)]).groupby(["_root", "model", "fp"]):
        root = int(root)
        out.append({"folder": str(paths[root]), "model": model, "fingerprint": fp, "expected": home[model],
                    "expected_folder": str(paths[int(home_root[model])]), "runs": part.run_id.nunique(),
                    "entries": sorted({f"{m}@{tags[root]}" for m in part.method})})
    df.loc[apart, "method"] = [f"{m}@{tags[r]}" for m, r in zip(df.method[apart], df._root[apart])]
    return out


def harmonic(base: Any, new: Any) -> Any:
    """H = 2 Base New / (Base + New), 0 where both are 0: a float for numbers, element-wise for arrays."""
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    h = np.where(b + n > 0, 2 * b * n / np.maximum(b + n, 1e-12), 0.0)
    return float(h) if h.ndim == 0 else h


def method_label(method: str, variant: str) -> str:
    """Display name of a method variant: ``coop`` or ``coop[n_ctx=4]``."""
    return f"{method}[{variant}]" if variant else method


def in_distribution(df: pd.DataFrame) -> pd.DataFrame:
    """Rows measured on the dataset the module was trained on (not the OOD rows of ``--ood``)."""
    return df[df.dataset == df.train_dataset]


def paired(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, target, dataset) with ``base`` and ``new`` accuracy side by side and per-seed ``H``."""
    key = ["run_id", "method", "method_variant", "dataset", "train_dataset", "shots", "seed", "source"]
    base = df[df.role == "base"][key + ["top1"]].rename(columns={"top1": "base"})
    new = df[df.role == "new"][key + ["eval_model", "top1"]].rename(columns={"top1": "new", "eval_model": "target"})
    out = base.merge(new, on=key, how="inner")
    out["H"] = [harmonic(b, n) for b, n in zip(out["base"], out["new"])]
    out["label"] = [method_label(m, v) for m, v in zip(out["method"], out["method_variant"])]
    return out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 2 numbers: per (source, target, label, dataset) mean/std over seeds of Base, New and H.

    ``H`` is the harmonic mean of the mean Base and mean New (as the paper reports it); ``H_std`` is the
    standard deviation of the per-seed H. The ``Average`` rows average the per-dataset means of the
    in-distribution datasets only (an OOD test set is the Table 3 protocol, not one more dataset of Table 2),
    with H of the averages.
    """
    pairs = paired(df)
    if pairs.empty:
        return pd.DataFrame(columns=["source", "target", "label", "method", "dataset", "shots", "base", "base_std",
                                     "new", "new_std", "H", "H_std", "seeds"])
    group = ["source", "target", "label", "method", "dataset", "shots"]
    agg = pairs.groupby(group, dropna=False).agg(
        base=("base", "mean"), base_std=("base", "std"), new=("new", "mean"), new_std=("new", "std"),
        H_std=("H", "std"), seeds=("seed", "nunique")).reset_index()
    agg["H"] = [harmonic(b, n) for b, n in zip(agg["base"], agg["new"])]
    ood = set(pairs.dataset[pairs.dataset != pairs.train_dataset])
    avg = agg[~agg.dataset.isin(ood)].groupby(["source", "target", "label", "method", "shots"]).agg(
        base=("base", "mean"), new=("new", "mean"), seeds=("seeds", "min"), datasets=("dataset", "nunique")
    ).reset_index()
    avg["dataset"] = "Average"
    avg["H"] = [harmonic(b, n) for b, n in zip(avg["base"], avg["new"])]
    out = pd.concat([agg, avg], ignore_index=True)
    return out.fillna({"base_std": math.nan})


def schema_markdown() -> str:
    """``results/SCHEMA.md``, generated from :data:`COLUMNS` so the document cannot drift from the code."""
    lines = [
        "# Result schema",
        "",
        f"Schema version **{SCHEMA_VERSION}**. One parquet row per (run x evaluated model x evaluated dataset);",
        "a results folder is read by reading every `*.parquet` under it (`upgradebench.results.read_results`).",
        "Files are written atomically (temporary file, then rename). A file of an older schema version is",
        "brought up to date by the explicit migrations in `upgradebench.results.MIGRATIONS`; a newer one is refused.",
        "Each row of schema 3 or later is checked against its `row_hash` when read (a mismatch is an error naming",
        "the file); reading overlapping folders counts a row (same run, model, dataset, fingerprints) once, with a",
        "warning. A row is never replaced by an evaluation of other weights under the same model name: `run` and",
        "`sweep` refuse unless `--replace`.",
        "Rows, ledgers and drift tables are each one `upgradebench.store.ParquetSchema` (columns, version,",
        "migrations, reading, writing and this documentation in one place).",
        "This file is generated by `python -m upgradebench.results > results/SCHEMA.md` (a test checks it).",
        "",
        *RESULT_SCHEMA.markdown_table(),
    ]
    lines += ["", "Base / New / H: `role == 'base'` rows give Base, `role == 'new'` rows give New for their",
              "`eval_model`; H = 2 Base New / (Base + New). Zero-shot accuracy of a model is the row of method",
              "`zeroshot`. Rows of role `mapped` (a target reached through a mapper other than `identity`,",
              "`run --mapper`) are never read as New: the upgrade matrix reads them (`docs/mappers.md`).",
              "Migrations: 3 -> 4 adds the mapper columns (`identity`, `{}`, `none`, 0, 0.0: every earlier row",
              "scored the module unchanged; its row hash is checked on the columns it was computed on);",
              "2 -> 3 adds `row_hash`; 1 -> 2 adds `trainable_params` and `needs_image_encoder` (NA) and the",
              "ledger; `upgradebench run` / `sweep` on an old folder re-evaluates each saved module (no refit),",
              "checks that top-1 is unchanged, writes the ledger and rewrites the row (keeping `created_at`,",
              "`fit_seconds` and the provenance columns). Compatibility metrics: `docs/metrics.md`.", ""]
    return "\n".join(lines) + "\n" + ledger_markdown()


if __name__ == "__main__":
    print(schema_markdown(), end="")
