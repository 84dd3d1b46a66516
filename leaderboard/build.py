"""The static leaderboard: one ``index.html`` plus local assets, built from result rows alone.

Per source -> target pair (and shot count) methods are ranked by their average H over datasets, with
Base / New / H per dataset, seeds and run counts, and the zero-shot rows marked as the reference every
module must beat; compatibility metrics (NFR, BTC, reuse gain, recovery ratio, with 95% intervals), cost
columns and a per-class flip view come from the prediction ledgers (``compatibility``). Provenance (tool, method
and model versions) and copied figures complete the page.

The page needs no network: CSS and the small sorting script are copied next to it. Every string that
comes from results (method names and configs, dataset and model names: plugins choose them) goes through
Jinja2's autoescaping, and the script only moves existing rows, never writes HTML.

Only complete, matching entries are ranked (``submission``): rows on other weights or another method version
than the reference protocol's are set aside, and a default-config entry whose remaining rows miss a cell of the
protocol is listed in a section of its own with what it lacks, never averaged over fewer datasets. Rows of cells
the protocol does not ask for (more seeds) are set aside too. An entry that rests on rows no one re-computed
(a folder other than the reference, unless ``--verify`` re-evaluated its sample of modules) or that no hash or
ledger covers is marked *unverified* wherever it is ranked; one whose re-computation does not match is left out.
Re-scored rows (``rescore``: modules evaluated on held-out models) add one column per model to the rankings.
Rows of modules carried to a target by a mapper (role ``mapped``) are never ranked: they are listed in a section
of their own, the upgrade matrix (:func:`upgradebench.analysis.matrix.matrix_table`), and every check and ranking
of entries reads the unmapped rows only.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader

from upgradebench.analysis.matrix import MappedLedgerKey, has_mapped_rows, matrix_table
from upgradebench.analysis.selection import main_summary_with_intervals, ordered_datasets, ordered_pairs
from upgradebench.atomic import write_atomic, write_text
from upgradebench.data import get_dataset
from upgradebench.errors import UserError
from upgradebench.guard import check_png, clean_data, input_files
from upgradebench.metrics import METRICS, LedgerKey, cells, class_flips, cost_summary
from upgradebench.provenance import now
from upgradebench.results import MergedResults, in_distribution, method_label, paired, summarize
from upgradebench.roles import MAPPED, ZERO_SHOT

from .rescore import held_out_scores
from .submission import Protocol, check_entries, check_submission, integrity_gaps, protocol_of

if TYPE_CHECKING:
    from upgradebench.runner import Runner

log = logging.getLogger(__name__)

ASSETS = ("style.css", "sort.js")
FIDELITY_KEYS = {"source", "target", "shots", "paper_table", "counts", "findings", "ranking_kendall_tau", "per_dataset"}


def _runs(df: pd.DataFrame) -> pd.Series:
    """Number of distinct runs per (source, target, shots, label, dataset)."""
    return paired(df).groupby(["source", "target", "shots", "label", "dataset"]).run_id.nunique()


def _entry(row: pd.Series, runs: int) -> dict[str, Any]:
    """What the template shows of one summary row."""
    return {"label": row.label, "method": row.method, "reference": row.method == ZERO_SHOT,
            "base": row.base, "new": row.new, "H": row.H, "base_std": row.get("base_std"),
            "new_std": row.get("new_std"), "seeds": int(row.seeds), "runs": runs,
            "datasets": int(row.datasets) if "datasets" in row and pd.notna(row.datasets) else None}


def _configs(df: pd.DataFrame) -> dict[str, str]:
    """label -> the method config (indented JSON) of that label's runs."""
    out: dict[str, str] = {}
    for method, variant, config in zip(df.method, df.method_variant, df.method_config):
        out.setdefault(method_label(method, variant), json.dumps(json.loads(config or "{}"), indent=1, sort_keys=True))
    return out


def matching_rows(df: pd.DataFrame, protocol: Protocol) -> pd.Series:
    """Whether each row's models, dataset and method version are the protocol's (where it knows them)."""
    def same(names: pd.Series, values: pd.Series, expected: dict[str, str]) -> pd.Series:
        return pd.Series([expected.get(n, v) == v for n, v in zip(names, values)], index=df.index, dtype=bool)

    return (same(df.source, df.source_fingerprint, protocol.models)
            & same(df.eval_model, df.eval_fingerprint, protocol.models)
            & same(df.dataset, df.dataset_fingerprint, protocol.datasets)
            & same(df.method, df.method_version, protocol.method_versions))


def outside_protocol(df: pd.DataFrame, protocol: Protocol) -> pd.Series:
    """Whether each row measures a cell its entry is not asked for (another seed, target, dataset or shots than
    :meth:`Protocol.expected`): a Base row when no expected cell has its source, dataset, shots and seed, a New
    row when its (source, target, dataset, shots, seed) is not expected (OOD rows follow their run's training
    dataset). Rows of other roles (oracle, rescore) are never outside: they belong to runs of their own."""
    expected: dict[str, tuple[set, set]] = {}

    def cells_for(label: str) -> tuple[set, set]:
        if label not in expected:
            cells = protocol.expected(label)
            expected[label] = cells, {(s, d, k, seed) for s, _, d, k, seed in cells}
        return expected[label]

    out = []
    for r in df[["method", "method_variant", "role", "source", "eval_model", "train_dataset", "shots",
                 "seed"]].itertuples(index=False):
        cells, bases = cells_for(method_label(r.method, r.method_variant))
        if r.role == "new":
            out.append((r.source, r.eval_model, r.train_dataset, int(r.shots), int(r.seed)) not in cells)
        elif r.role == "base":
            out.append((r.source, r.train_dataset, int(r.shots), int(r.seed)) not in bases)
        else:
            out.append(False)
    return pd.Series(out, index=df.index, dtype=bool)


def split_entries(df: pd.DataFrame, protocol: Protocol) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(the rows that may be ranked, the entries that are not ranked, or ranked without some of their rows,
    with what they lack).

    Rows that do not match the protocol, or measure a cell it does not ask for (:func:`outside_protocol`: more
    seeds, say), are dropped, with a warning; a default-config entry whose matching rows miss a cell of the
    protocol is dropped whole. Variants (ablations) keep their own table, which shows how many datasets each
    averages over. Every entry with rows set aside is reported, with its check.
    """
    # one reference run read twice (a run set apart on other weights keeps its own rows: method@folder)
    df = df.drop_duplicates(["run_id", "method", "eval_model", "dataset", "role"])
    outside = outside_protocol(df, protocol)
    if outside.any():
        labels = sorted({method_label(m, v) for m, v in zip(df.method[outside], df.method_variant[outside])})
        log.warning("%d rows measure cells the protocol (%s) does not ask for and are not counted: %s",
                    int(outside.sum()), protocol.where, ", ".join(labels))
    inside = df[~outside]
    ok = inside[matching_rows(inside, protocol)]
    complete = {e["label"] for e in check_entries(ok, protocol) if e["complete"]}
    labels = pd.Series([method_label(m, v) for m, v in zip(ok.method, ok.method_variant)], index=ok.index, dtype=object)
    ranked = ok[(ok.method_variant != "") | labels.isin(complete)]
    unranked = [e for e in check_entries(df, protocol)
                if (e["variant"] == "" and e["label"] not in complete) or not e["matching"] or e["extra"]]
    return ranked, unranked


def unverified_entries(merged: MergedResults, folders: Sequence[Path], ledgers: dict[LedgerKey, pd.DataFrame],
                       reference: int | None, recomputed: AbstractSet[tuple[int, str]] = frozenset()) -> dict[str, str]:
    """Why each entry (label) of ``merged`` (the rows of ``folders``) is not verified; entries not named are.

    A row is unverified when it carries no row hash (written before schema 3), has no prediction ledger, its
    run's module records no content hash, or it comes from a folder other than ``reference`` (the index of the
    folder that is the reference protocol, if one of ``folders`` is) whose entry was not re-computed
    (``recomputed``: (folder index, label) pairs whose sample of modules gave their rows, see
    :func:`upgradebench.leaderboard.submission.check_submission`)."""
    df = merged.rows.assign(_folder=merged.folder.to_numpy(), _hashed=merged.hashed.to_numpy())
    df = df[df.role != MAPPED].copy()  # never ranked (the upgrade matrix lists them): they neither mark nor clear
    df["_label"] = [method_label(m, v) for m, v in zip(df.method, df.method_variant)]
    gaps: dict[tuple[int, str], list[str]] = {}
    for index, folder in enumerate(folders):
        part = df[df._folder == index]
        for run_id, g in integrity_gaps(folder, part, part._hashed, ledgers).items():
            gaps[(index, run_id)] = g
    out: dict[str, list[str]] = {}
    for (index, label), rows in df.groupby(["_folder", "_label"], sort=True):
        reasons = out.setdefault(label, [])
        runs = sorted(set(rows.run_id))
        gapped = [r for r in runs if (index, r) in gaps]
        if gapped:
            reasons.append(f"{len(gapped)} of its {len(runs)} runs in {folders[index]} lack a hash or ledger (e.g. "
                           f"{gapped[0]}: {gaps[(index, gapped[0])][0]})")
        if index != reference and (index, label) not in recomputed:
            reasons.append(f"its runs in {folders[index]} were not re-computed (run `upgradebench leaderboard check "
                           f"{folders[index]} --against REFERENCE`, or build with --verify)")
    return {label: "; ".join(reasons) for label, reasons in out.items() if reasons}


def reference_index(folders: Sequence[Path], against: str | None) -> int | None:
    """Which of ``folders`` is the reference protocol: the one that is ``against`` (a folder), the first
    without ``against``, none when ``against`` is a grid or another folder."""
    if against is None:
        return 0
    if not Path(against).is_dir():
        return None
    target = Path(against).resolve()
    return next((i for i, f in enumerate(folders) if Path(f).resolve() == target), None)


def verify_folders(merged: MergedResults, folders: Sequence[Path], protocol: Protocol, reference: int | None,
                   runner: Runner, salt: str = "") -> tuple[MergedResults, set[tuple[int, str]], list[dict[str, Any]]]:
    """``leaderboard build --verify``: each folder but the reference checked as ``leaderboard check`` does
    (:func:`upgradebench.leaderboard.submission.check_submission`, its sample of modules re-evaluated; ``salt``
    picks the sample).

    Returns ``merged`` without the rows of entries whose re-computation did not match (with a warning), the
    (folder index, label) pairs that were verified, and the reports of the entries left out."""
    recomputed: set[tuple[int, str]] = set()
    rejected: list[dict[str, Any]] = []
    keep = np.ones(len(merged.rows), dtype=bool)
    rows, where = merged.rows, merged.folder.to_numpy()
    for index, folder in enumerate(folders):
        if index == reference:
            continue
        for entry in check_submission(folder, protocol, runner, salt=salt)["entries"]:
            if entry["verification"] in ("verified", "sampled"):
                recomputed.add((index, entry["label"]))
            elif entry["mismatches"]:
                log.warning("%s in %s: its re-computed modules do not give its rows (e.g. run %s); it is not ranked",
                            entry["label"], folder, entry["mismatches"][0]["run_id"])
                rejected.append(entry)
                keep &= ~((where == index) & (rows.method == entry["method"]).to_numpy()
                          & (rows.method_variant == entry["variant"]).to_numpy())
    if keep.all():
        return merged, recomputed, rejected
    kept = replace(merged, rows=rows[keep].reset_index(drop=True), folder=merged.folder[keep].reset_index(drop=True),
                   hashed=merged.hashed[keep].reset_index(drop=True))
    return kept, recomputed, rejected


def board(df: pd.DataFrame, held_out: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """One section per (source, target, shots): ranked reference methods, ranked variants, per-dataset rows;
    with ``held_out`` (:func:`upgradebench.leaderboard.rescore.held_out_scores`) each entry's top-1 on each
    held-out model."""
    held_out = held_out if held_out is not None else held_out_scores(pd.DataFrame())
    models = sorted(set(held_out.model))
    scores = {(r.source, int(r.shots), r.label, r.model): r for r in held_out.itertuples(index=False)}
    rows = in_distribution(df)
    summary = summarize(rows)
    runs = _runs(rows)
    run_totals = runs.groupby(level=["source", "target", "shots", "label"]).sum()
    configs = _configs(rows)
    sections: list[dict[str, Any]] = []
    for source, target in ordered_pairs(summary):
        pair = summary[(summary.source == source) & (summary.target == target)]
        for shots in sorted(pair.shots.unique(), reverse=True):
            part = pair[pair.shots == shots]
            avg = part[part.dataset == "Average"].sort_values("H", ascending=False)
            n_datasets = part[part.dataset != "Average"].dataset.nunique()
            ranked: list[dict[str, Any]] = []
            variant_rows: list[dict[str, Any]] = []
            for _, row in avg.iterrows():
                entry = {**_entry(row, int(run_totals.loc[(source, target, shots, row.label)])),
                         "config": configs.get(row.label, ""),
                         "held_out": [_held_out(scores.get((source, int(shots), row.label, m))) for m in models]}
                (ranked if row.label == row.method else variant_rows).append(entry)  # label == method: defaults
            for group in (ranked, variant_rows):
                for rank, entry in enumerate(group, 1):
                    entry["rank"] = rank
            # per dataset: reference configurations only (variants are ablations, listed by average above)
            detail = part[(part.dataset != "Average") & (part.label == part.method)]
            per_dataset = [{**_entry(r, int(runs.loc[(source, target, shots, r.label, r.dataset)])),
                            "dataset": r.dataset}
                           for _, r in detail.sort_values(["dataset", "H"], ascending=[True, False]).iterrows()]
            zs = avg[avg.method == ZERO_SHOT]
            sections.append({
                "id": f"pair-{len(sections) + 1}", "source": source, "target": target, "shots": int(shots),
                "datasets": [d for d in ordered_datasets(part.dataset) if d != "Average"], "n_datasets": n_datasets,
                "ranked": ranked, "variants": variant_rows, "per_dataset": per_dataset,
                "zeroshot_new": float(zs.new.iloc[0]) if len(zs) else None, "held_out_models": models,
            })
    return sections


def _held_out(score: Any) -> dict[str, Any] | None:
    return None if score is None else {"top1": float(score.top1), "datasets": int(score.datasets),
                                       "seeds": int(score.seeds)}


# ---- compatibility beyond top-1 (template: compatibility.html) -------------------------------------------------------
def compatibility(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame],
                  flips: str | None = None) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Per (source, target, shots): each reference method's compatibility metrics (averages over datasets, 95%
    intervals), its cost, and the per-class flips of one method (``flips``, or the one with the largest NFR)."""
    summary = main_summary_with_intervals(df, ledgers)
    costs = cost_summary(df).set_index(["source", "label", "shots"])
    found = cells(in_distribution(df[df.method_variant == ""]), ledgers)
    if flips is not None and flips not in {key[2] for key in found}:  # never a page silently without the section
        raise UserError(f"--flips {flips!r} names no method with prediction ledgers in these results.",
                        f"use one of: {', '.join(sorted({key[2] for key in found})) or 'none (no ledgers)'}")
    out = {}
    for (source, target, shots), part in summary[summary.dataset == "Average"].groupby(["source", "target", "shots"]):
        entries = []
        for _, r in part.iterrows():
            cost = costs.loc[(source, r.label, shots)] if (source, r.label, shots) in costs.index else {}
            entries.append({"label": r.label, "reference": r.method == ZERO_SHOT,
                            **{k: r.get(k) for m in METRICS for k in (m, f"{m}_lo", f"{m}_hi")},
                            **{k: _value(cost, k) for k in ("trainable_params", "fit_seconds", "device",
                                                            "needs_image_encoder")}})
        candidates = [e for e in entries if not e["reference"] and pd.notna(e["nfr"])]
        chosen = (flips if flips is not None
                  else max(candidates, key=lambda e: e["nfr"])["label"] if candidates else None)
        views = []
        for key, cell in sorted(found.items()):
            if key[:3] == (source, target, chosen) and key[5] == shots:
                table = class_flips(cell, _class_names(key[4]))
                views.append({"dataset": key[4], "seeds": len(cell.seeds), "classes": table.to_dict(orient="records")})
        out[(source, target, int(shots))] = {"entries": entries, "flips_label": chosen, "flips": views}
    return out


# ---- upgrade matrix (mapped modules, never ranked) ------------------------------------------------------------------
def upgrade_matrix(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame],
                   mapped_ledgers: dict[MappedLedgerKey, pd.DataFrame]) -> dict[str, Any]:
    """The page's "Upgrade matrix" section: one entry per row of :func:`upgradebench.analysis.matrix.matrix_table`
    of a reference configuration (variants are ablations, as in the compatibility tables), in its order."""
    table = matrix_table(in_distribution(df), ledgers, mapped_ledgers)
    table = table[table.variant == ""]
    return {"entries": table.drop(columns=["mapper_config", "variant"]).to_dict(orient="records")}


def _value(cost: Any, key: str) -> Any:
    value = cost.get(key) if hasattr(cost, "get") else None
    return None if value is None or pd.isna(value) else value


def _class_names(dataset: str) -> list[str] | None:
    """The dataset's class names when it can be opened here (real datasets need their data root)."""
    try:
        return get_dataset(dataset).classnames
    except UserError:
        return None


def provenance(df: pd.DataFrame) -> dict[str, Any]:
    """Who and what produced the rows: tool versions, methods with their origin, models with fingerprints."""
    def distinct(columns: list[str]) -> list[dict[str, Any]]:
        counts = df.groupby(columns, dropna=False).size().reset_index(name="rows")
        return counts.to_dict(orient="records")

    models = pd.concat([df[["source", "source_fingerprint"]].set_axis(["model", "fingerprint"], axis=1),
                        df[["eval_model", "eval_fingerprint"]].set_axis(["model", "fingerprint"], axis=1)])
    models = models.drop_duplicates().sort_values(["model", "fingerprint"])
    changed = set(models.model[models.model.duplicated()])
    return {
        "software": distinct(["upgradebench_version", "git_sha", "torch_version", "open_clip_version", "device"]),
        "methods": distinct(["method", "method_version", "method_origin"]),
        "models": [{"model": m, "fingerprint": f, "changed": m in changed}
                   for m, f in zip(models.model, models.fingerprint)],
        "first": df.created_at.min(), "last": df.created_at.max(), "rows": len(df), "runs": df.run_id.nunique(),
    }


def scorecards_in(folder: Path) -> list[dict[str, Any]]:
    """The fidelity scorecards (``fidelity-*.json``, written by ``upgradebench figures``) in a figures folder."""
    cards = []
    for path in input_files(folder, "fidelity-*.json", recursive=False, what="figures folder"):
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            card, problem = None, str(exc)
        else:
            problem = "missing keys"
        if not isinstance(card, dict) or not FIDELITY_KEYS <= card.keys():
            raise UserError(f"{path} is not a fidelity scorecard ({problem}).",
                            "re-run `upgradebench figures` to rewrite it")
        cards.append(card)
    return cards


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("upgradebench.leaderboard", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v: "" if v is None or pd.isna(v) else f"{float(v):.2f}"
    env.filters["signed"] = lambda v: "–" if v is None or pd.isna(v) else f"{float(v):+.2f}"
    return env


def build_site(df: pd.DataFrame, out: str | Path, figures: str | Path | None = None,
               ledgers: dict[LedgerKey, pd.DataFrame] | None = None, flips: str | None = None,
               protocol: Protocol | None = None, rescored: pd.DataFrame | None = None,
               unverified: dict[str, str] | None = None, rejected: list[dict[str, Any]] | None = None,
               mapped_ledgers: dict[MappedLedgerKey, pd.DataFrame] | None = None) -> list[Path]:
    """Write ``index.html``, its assets and copies of the figure PNGs into ``out``; returns the files written.

    Entries are checked against ``protocol`` (default: the protocol of ``df`` itself); only complete, matching
    ones are ranked, the others are listed apart. With ``ledgers`` each section also shows the compatibility
    metrics with intervals, the cost columns and the per-class flips of the method ``flips`` (default: the one
    with the largest NFR). ``rescored`` rows (:func:`upgradebench.leaderboard.rescore.rescore`) of ranked
    entries add a column per held-out model. An entry named in ``unverified`` (:func:`unverified_entries`) is
    marked so wherever it is ranked, with the reason; ``rejected`` entries (reports of
    :func:`upgradebench.leaderboard.submission.check_submission` whose re-computation did not match, their rows
    already left out of ``df``) are listed with the unranked ones. Rows of modules carried by a mapper (role
    ``mapped``, their ledgers in ``mapped_ledgers``) are never ranked: the page lists them in its "Upgrade matrix".
    """
    out = Path(out)
    all_rows = df
    matrix = upgrade_matrix(df, ledgers or {}, mapped_ledgers or {}) if has_mapped_rows(df) else None
    df = df[df.role != MAPPED]  # mapped modules are listed in the matrix, never ranked against unmapped ones
    protocol = protocol or protocol_of(df, "the results themselves")
    df, unranked = split_entries(df, protocol)
    unranked += rejected or []
    held_out = None
    if rescored is not None and len(rescored):
        held_out = held_out_scores(rescored[rescored.run_id.isin(set(df.run_id))])
    sections = board(df, held_out)
    if not sections:
        raise UserError("The results hold no paired Base/New rows, so there is nothing to rank.",
                        "pass the folder given to `upgradebench run --results`")
    compat = compatibility(df, ledgers or {}, flips)
    for section in sections:
        section["compat"] = compat.get((section["source"], section["target"], section["shots"]))
        for entry in section["ranked"] + section["variants"] + section["per_dataset"]:
            entry["unverified"] = (unverified or {}).get(entry["label"])
    figure_files, fidelity = [], []
    if figures is not None:
        figures = Path(figures)
        if not figures.is_dir():
            raise UserError(f"Figures folder {figures} does not exist.", "run `upgradebench figures --out DIR` first")
        # only files inside the folder (no link out of it), and only complete PNGs are published
        figure_files = [check_png(png) for png in input_files(figures, "*.png", recursive=False,
                                                                 what="figures folder")]
        fidelity = scorecards_in(figures)
        order: dict[tuple[str, str], int] = {}
        for section in sections:
            order.setdefault((section["source"], section["target"]), len(order))
        fidelity.sort(key=lambda card: order.get((card["source"], card["target"]), len(order)))
    # every file is written atomically: a build killed midway leaves the previous page whole
    written = []
    for name in ASSETS:
        source = files("upgradebench.leaderboard").joinpath("templates").joinpath(name)
        written.append(write_text(out / "assets" / name, source.read_text(encoding="utf-8")))
    copied = []
    for png in figure_files:
        written.append(write_atomic(out / "figures" / png.name, partial(shutil.copyfile, png)))
        copied.append({"src": f"figures/{quote(png.name)}", "name": png.stem})
    # rows' and plugins' text reaches the page without control characters (autoescaping does not remove them)
    if matrix is not None:
        matrix["figures"] = [f for f in copied if f["name"].startswith("fig-matrix")]
    context = clean_data({"sections": sections, "unranked": unranked, "protocol_where": protocol.where,
                          "provenance": provenance(all_rows), "figures": copied, "fidelity": fidelity,
                          "matrix": matrix})
    index = write_text(out / "index.html", _environment().get_template("index.html").render(**context,
                                                                                           generated=now()))
    return [index, *written]
