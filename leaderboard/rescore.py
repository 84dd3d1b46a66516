"""Re-scoring: every submitted module evaluated, without retraining, on models its submitter never saw.

Each run with a saved module and a Base row (not an oracle fit) is evaluated on each extra model on the
dataset it was fitted on, through :meth:`upgradebench.runner.Runner.predict` (the code path of
``upgradebench eval --module``). Its row copies the run's identity and provenance from the Base row, with
``role`` :data:`RESCORE_ROLE`, and is written with its ledger into a folder of its own,
``RESCORED/<run_id>/<model>--<dataset>.parquet``, never into the submitted folder. A row that exists for the
same weights is reused, so an interrupted re-scoring continues where it stopped; one of other weights under
the same name is refused, never replaced. Runs whose module is missing are skipped (``leaderboard check``
reports them).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from upgradebench.errors import UserError
from upgradebench.features import progress_bar
from upgradebench.guard import check_run_id, safe_name
from upgradebench.ledger import ledger_path, write_ledger
from upgradebench.module_io import MODULE_CONFIG, load_module
from upgradebench.provenance import now, versions
from upgradebench.results import in_distribution, method_label, read_results, write_rows
from upgradebench.runner import Runner

RESCORE_ROLE = "rescore"


def rescore(folders: list[Path], models: list[str], out: Path, runner: Runner) -> pd.DataFrame:
    """Rows of every module under ``folders`` evaluated on each of ``models`` (written under ``out``)."""
    jobs = []
    for folder in folders:
        rows = in_distribution(read_results(folder))
        base = rows[rows.role == "base"].drop_duplicates("run_id")
        # a run without its module cannot be re-scored: `leaderboard check` reports it, the column stays empty
        for row in base.itertuples(index=False):
            # a run id is joined onto folders here and under `out`: a name, never a path (read_results checks it)
            module_dir = folder / check_run_id(row.run_id, folder) / "module"
            if (module_dir / MODULE_CONFIG).is_file():
                jobs.append((module_dir, row))
    found = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("re-scoring", total=len(jobs) * len(models))
        for name in models:
            vlm = runner.model(name)
            for module_dir, row in jobs:
                path = out / row.run_id / f"{safe_name(vlm.name)}--{safe_name(row.dataset)}.parquet"
                existing = read_results(path) if path.is_file() else None
                if existing is not None and existing.eval_fingerprint.iloc[0] != vlm.fingerprint:
                    raise UserError(f"{path} holds an evaluation of other weights under {vlm.name!r} "
                                    f"({existing.eval_fingerprint.iloc[0]}, now {vlm.fingerprint}).",
                                    "move that folder away, or pass another --rescored folder")
                if existing is None:
                    dataset = runner.dataset(row.dataset)
                    preds, top1, seconds = runner.predict(load_module(module_dir), vlm, dataset)
                    write_ledger(preds, ledger_path(path), row.run_id, vlm.name, dataset.name)
                    write_rows([{**row._asdict(), **versions(), "created_at": now(), "eval_model": vlm.name,
                                 "eval_fingerprint": vlm.fingerprint, "role": RESCORE_ROLE, "top1": top1,
                                 "n_test": len(preds), "fit_seconds": 0.0, "eval_seconds": seconds,
                                 "device": str(runner.device)}], path)
                found.append(read_results(path))
                bar.advance(task)
    return pd.concat(found, ignore_index=True) if found else read_results()


def held_out_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean top-1 per (source, shots, label, model) of re-scored rows: the mean over datasets of the mean over
    seeds, with the number of datasets and seeds it covers."""
    if rows.empty:
        return pd.DataFrame(columns=["source", "shots", "label", "model", "top1", "datasets", "seeds"])
    rows = rows.assign(label=[method_label(m, v) for m, v in zip(rows.method, rows.method_variant)])
    per_dataset = rows.groupby(["source", "shots", "label", "eval_model", "dataset"]).agg(
        top1=("top1", "mean"), seeds=("seed", "nunique")).reset_index()
    out = per_dataset.groupby(["source", "shots", "label", "eval_model"]).agg(
        top1=("top1", "mean"), datasets=("dataset", "nunique"), seeds=("seeds", "min")).reset_index()
    return out.rename(columns={"eval_model": "model"})
