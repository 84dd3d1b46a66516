"""Compatibility metrics beyond top-1, from the prediction ledgers, with paired-bootstrap intervals.

For a run of a module fitted on the source and evaluated on a target (definitions and sources:
``docs/metrics.md``):

- NFR, negative flip rate (Yan et al., CVPR 2021): items module@source gets right and module@target wrong;
  PFR: the reverse.
- BTC, backward trust compatibility (Srivastava et al., KDD 2020): items right under both / items right
  under module@source.
- NFR against doing nothing: items zero-shot@target gets right and module@target wrong.
- Reuse gain: acc(module@target) - acc(zero-shot@target).
- Recovery ratio: (acc(module@target) - acc(ZS@target)) / (acc(oracle) - acc(ZS@target)), the oracle being
  the same method and config fitted on the target (rows of role ``oracle``).

Intervals: a paired bootstrap that resamples seeds and test items (the same items for every array of a
dataset, so methods, models and seeds stay paired); percentile 95% intervals. The resampling weights of a
dataset depend only on (dataset, its items, the seeds, the bootstrap seed), so two summaries computed
separately (two methods, a figure and a table) use the same replicates and their differences are paired.
A metric that needs a ledger the folder does not have (schema-1 rows) is NaN, never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from .errors import UserError
from .guard import input_files
from .ledger import check_against_rows, is_ledger_file, mapped_label, read_ledger_files
from .provenance import stable_hash
from .results import harmonic, method_label, summarize
from .roles import ORACLE, ZERO_SHOT

N_BOOT = 1000
LEVEL = 0.95

LedgerKey = tuple[str, str, str]  # (run_id, eval_model, dataset)

# The metrics of a (method, target, dataset) cell with intervals, and what each needs (besides the ledgers).
METRICS = ("base", "new", "H", "nfr", "pfr", "btc", "nfr_zs", "reuse_gain", "recovery")
RECOVERY_MIN_ROOM = 1.0
"""Points (top-1 %) by which the oracle must beat the target's zero-shot for the recovery ratio to be defined:
with less room, (reuse gain) / (room) divides by noise (a room of 0.01 turns a 1-point loss into -100)."""


def read_ledgers(*paths: str | Path) -> dict[LedgerKey, pd.DataFrame]:
    """Every prediction ledger of an unmapped row (the module unchanged) under the given result folders, sorted by
    item, by (run_id, eval_model, dataset)."""
    return read_ledger_files(_ledger_files(paths, mapped=False))  # type: ignore[return-value]


def read_mapped_ledgers(*paths: str | Path) -> dict[tuple[str, str, str, str], pd.DataFrame]:
    """Every prediction ledger of a mapped row (role ``mapped``) under the given result folders, sorted by item, by
    (run_id, eval_model, dataset, mapper label): :func:`upgradebench.plan.mapper_label` of the row."""
    return read_ledger_files(_ledger_files(paths, mapped=True), labelled=True)  # type: ignore[return-value]


def _ledger_files(paths: tuple[str | Path, ...], mapped: bool) -> list[Path]:
    return [f for root in paths for f in input_files(root, "*.parquet", what="results folder")
            if not f.name.startswith(".") and is_ledger_file(f) and bool(mapped_label(f)) == mapped]


@dataclass
class Cell:
    """The paired per-item correctness of one (source, target, label, dataset, shots) over its seeds.

    Arrays are ``[seeds, items]`` booleans; ``zs`` (target's zero-shot) and ``oracle`` may be None.
    """

    seeds: list[int]
    items: np.ndarray
    base: np.ndarray
    new: np.ndarray
    zs: np.ndarray | None
    oracle: np.ndarray | None
    labels: np.ndarray


def _correct(ledgers: dict[LedgerKey, pd.DataFrame], key: LedgerKey, items: np.ndarray | None) -> pd.DataFrame | None:
    ledger = ledgers.get(key)
    if ledger is None:
        return None
    if items is not None and not np.array_equal(ledger.item.to_numpy(), items):
        raise UserError(f"The ledger of run {key[0]} on {key[1]} / {key[2]} holds other test items than the runs "
                        "it is paired with (a dataset changed between runs).",
                        "keep runs of different dataset versions in different results folders")
    return ledger


def cells(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame]) -> dict[tuple, Cell]:
    """Paired correctness arrays per (source, target, label, dataset, shots), for every method's base/new runs.

    A cell is left out when a seed lacks the ledger of its base or new row (schema-1 rows): its ledger
    metrics are then missing. The target's zero-shot (any seed: it does not depend on one) and the oracle
    (same method, variant, shots and seed) are attached when their ledgers exist for every seed. Each ledger
    must agree with its row (:func:`~upgradebench.ledger.check_against_rows`).
    """
    check_against_rows(ledgers, rows)
    zs_rows = rows[rows.method == ZERO_SHOT]
    oracle_rows = rows[rows.role == ORACLE]
    base = rows[rows.role == "base"]
    new = rows[rows.role == "new"]
    key = ["run_id", "dataset"]
    pairs = base[key + ["method", "method_variant", "source", "shots", "seed", "eval_model"]].merge(
        new[key + ["eval_model"]].rename(columns={"eval_model": "target"}), on=key)
    out: dict[tuple, Cell] = {}
    for (source, target, method, variant, dataset, shots), group in pairs.groupby(
            ["source", "target", "method", "method_variant", "dataset", "shots"], sort=True):
        items: np.ndarray | None = None
        arrays: dict[str, list[np.ndarray | None]] = {"base": [], "new": [], "zs": [], "oracle": []}
        labels: np.ndarray | None = None
        complete = True
        for r in group.sort_values("seed").itertuples():
            b = _correct(ledgers, (r.run_id, r.eval_model, dataset), items)
            if b is None:
                complete = False
                break
            items = b.item.to_numpy() if items is None else items
            labels = b.label.to_numpy()
            n = _correct(ledgers, (r.run_id, target, dataset), items)
            if n is None:
                complete = False
                break
            arrays["base"].append(b.correct.to_numpy())
            arrays["new"].append(n.correct.to_numpy())
            z = zs_rows[(zs_rows.eval_model == target) & (zs_rows.dataset == dataset)]
            z = z[z.seed == r.seed] if (z.seed == r.seed).any() else z
            zl = _correct(ledgers, (z.run_id.iloc[0], target, dataset), items) if len(z) else None
            arrays["zs"].append(None if zl is None else zl.correct.to_numpy())
            o = oracle_rows[(oracle_rows.method == method) & (oracle_rows.method_variant == variant) &
                            (oracle_rows.eval_model == target) & (oracle_rows.dataset == dataset) &
                            (oracle_rows.shots == shots) & (oracle_rows.seed == r.seed)]
            ol = _correct(ledgers, (o.run_id.iloc[0], target, dataset), items) if len(o) else None
            arrays["oracle"].append(None if ol is None else ol.correct.to_numpy())
        if not complete:
            continue
        stacked = {k: (np.stack(cast(list[np.ndarray], v)) if v and all(a is not None for a in v) else None)
                   for k, v in arrays.items()}  # the cast: all(...) checked that none is None
        base_stack, new_stack = stacked["base"], stacked["new"]
        # a complete group ran every seed (a group has at least one), each with its base and new ledgers
        assert items is not None and labels is not None and base_stack is not None and new_stack is not None
        out[(source, target, method_label(method, variant), method, dataset, shots)] = Cell(
            seeds=sorted(group.seed.tolist()), items=items, base=base_stack, new=new_stack,
            zs=stacked["zs"], oracle=stacked["oracle"], labels=labels)
    return out


def resampling_weights(dataset: str, items: np.ndarray, seeds: list[int], n_boot: int = N_BOOT,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap weights ``([B, items], [B, seeds])``: multinomial counts, reproducible from their inputs.

    The same (dataset, items, seeds) always gets the same weights, which pairs every array resampled with them.
    """
    rng = np.random.default_rng(int(stable_hash([dataset, len(items), str(items[0]), str(items[-1]), seeds, seed],
                                                12), 16))
    n, k = len(items), len(seeds)
    item_w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float32)
    seed_w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float32)
    return item_w, seed_w


def _replicates(x: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bootstrap replicates of sum over seeds and items of ``x`` (``[seeds, items]``), as weighted totals."""
    item_w, seed_w = weights  # integer counts: float32 sums of them are exact below 2**24
    return ((item_w @ x.T.astype(np.float32)) * seed_w).sum(1).astype(np.float64)


def cell_metrics(cell: Cell, weights: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Every metric of a cell: the point estimate (first element) followed by its bootstrap replicates.

    ``weights=None`` gives the point estimates only. Accuracies and rates are in percent.
    """
    k, n = cell.base.shape
    ones = (np.ones((1, n), np.float32), np.ones((1, k), np.float32))

    def total(x: np.ndarray) -> np.ndarray:
        point = _replicates(x, ones)
        return point if weights is None else np.concatenate([point, _replicates(x, weights)])

    size = total(np.ones_like(cell.base))
    acc = {name: 100 * total(a) / size for name, a in (("base", cell.base), ("new", cell.new),
                                                         ("zs", cell.zs), ("oracle", cell.oracle)) if a is not None}
    nan = np.full_like(size, np.nan)
    out = {
        "base": acc["base"], "new": acc["new"], "H": harmonic(acc["base"], acc["new"]),
        "nfr": 100 * total(cell.base & ~cell.new) / size,
        "pfr": 100 * total(~cell.base & cell.new) / size,
    }
    right = total(cell.base)
    out["btc"] = np.where(right > 0, 100 * total(cell.base & cell.new) / np.maximum(right, 1e-12), np.nan)
    out["nfr_zs"] = 100 * total(cell.zs & ~cell.new) / size if cell.zs is not None else nan
    out["reuse_gain"] = acc["new"] - acc["zs"] if "zs" in acc else nan
    if "zs" in acc and "oracle" in acc:
        out["room"] = acc["oracle"] - acc["zs"]  # not a metric: what an Average's recovery is computed from
        out["recovery"] = recovery_ratio(acc["new"] - acc["zs"], out["room"])
    else:
        out["recovery"] = nan
    return out


def recovery_ratio(gain: Any, room: Any) -> Any:
    """Reuse gain over the oracle's room above zero-shot (``(New - ZS) / (oracle - ZS)``), NaN where the oracle beats
    zero-shot by less than ``RECOVERY_MIN_ROOM`` (with less room the ratio explodes): a float for numbers,
    element-wise for arrays."""
    g, r = np.asarray(gain, dtype=float), np.asarray(room, dtype=float)
    defined = r >= RECOVERY_MIN_ROOM
    ratio = np.where(defined, g / np.where(defined, r, 1), np.nan)
    return float(ratio) if ratio.ndim == 0 else ratio


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN when there are none)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _metric_row(values: dict[str, np.ndarray]) -> dict[str, float]:
    row: dict[str, float] = {}
    for name in METRICS:
        v = values[name]
        row[name] = float(v[0])
        # an undefined estimate has no interval, though some replicates may define it
        row[f"{name}_lo"], row[f"{name}_hi"] = interval(v[1:]) if np.isfinite(v[0]) else (math.nan, math.nan)
    return row


def compat_summary(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame], n_boot: int = N_BOOT,
                   seed: int = 0) -> pd.DataFrame:
    """Per (source, target, label, dataset, shots) and on average: every metric with its 95% interval.

    The ``Average`` rows average the per-dataset replicates of the in-distribution datasets (H of the
    averaged Base and New; recovery: the averaged gain over the averaged room, on the datasets with oracle
    runs), so their intervals account for every dataset's resampling. Recovery and reuse
    gain fall back to the rows' top-1 (without interval) where ledgers are missing; the ledger metrics are
    then NaN.
    """
    found = cells(rows, ledgers)
    records, replicates, shared = [], {}, {}
    for key, cell in found.items():
        source, target, label, method, dataset, shots = key
        draw = (dataset, tuple(cell.seeds), len(cell.items))
        if draw not in shared:
            shared[draw] = resampling_weights(dataset, cell.items, cell.seeds, n_boot, seed)
        weights = shared[draw]
        values = cell_metrics(cell, weights)
        replicates[key] = values
        records.append({"source": source, "target": target, "label": label, "method": method, "dataset": dataset,
                        "shots": shots, "seeds": len(cell.seeds), "n_test": cell.base.shape[1], **_metric_row(values)})
    columns = ["source", "target", "label", "method", "dataset", "shots", "seeds", "n_test"] + \
              [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
    per_dataset = pd.DataFrame(records, columns=columns)
    ood = set(rows.dataset[rows.dataset != rows.train_dataset])
    averages = []
    for (source, target, label, method, shots), group in per_dataset[~per_dataset.dataset.isin(ood)].groupby(
            ["source", "target", "label", "method", "shots"], sort=True):
        keys = [(source, target, label, method, d, shots) for d in group.dataset]
        mean = {m: np.mean([replicates[k][m] for k in keys], axis=0) for m in METRICS}
        mean["H"] = harmonic(mean["base"], mean["new"])
        # recovery of an Average is its mean gain over its mean room, on the datasets with oracle runs (as in
        # summarize_with_intervals), not a mean of ratios: one dataset with little room would send that anywhere
        oracle_keys = [k for k in keys if "room" in replicates[k]]
        mean["recovery"] = recovery_ratio(np.mean([replicates[k]["reuse_gain"] for k in oracle_keys], axis=0),
                                          np.mean([replicates[k]["room"] for k in oracle_keys], axis=0)) \
            if oracle_keys else np.full_like(mean["base"], np.nan)
        averages.append({"source": source, "target": target, "label": label, "method": method, "dataset": "Average",
                         "shots": shots, "seeds": int(group.seeds.min()), "n_test": int(group.n_test.sum()),
                         **_metric_row(mean)})
    return pd.concat([per_dataset, pd.DataFrame(averages, columns=columns)], ignore_index=True)


def class_flips(cell: Cell, class_names: list[str] | None = None) -> pd.DataFrame:
    """Per class (pooled over seeds): items, negative flips (right on source, wrong on target) and positive flips."""
    neg = (cell.base & ~cell.new).sum(0)
    pos = (~cell.base & cell.new).sum(0)
    df = pd.DataFrame({"label": cell.labels, "negative": neg, "positive": pos})
    out = df.groupby("label").agg(items=("label", "size"), negative_flips=("negative", "sum"),
                                  positive_flips=("positive", "sum")).reset_index()
    out["items"] *= len(cell.seeds)
    if class_names is not None:
        out.insert(1, "class", [class_names[i] if i < len(class_names) else str(i) for i in out.label])
    return out.sort_values(["negative_flips", "label"], ascending=[False, True], ignore_index=True)


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's test on paired correctness: (#A right & B wrong, #A wrong & B right, two-sided p).

    Exact binomial test when the discordant pairs are few (< 50), else the chi-square statistic with
    continuity correction (1 degree of freedom).
    """
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return only_a, only_b, 1.0
    if n < 50:
        k = min(only_a, only_b)
        p = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        return only_a, only_b, min(1.0, p)
    chi2 = (abs(only_a - only_b) - 1) ** 2 / n
    return only_a, only_b, math.erfc(math.sqrt(chi2 / 2))


def compare(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame], label_a: str, label_b: str,
            n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """A - B on the runs both have (same source, target, dataset, shots and seeds), per dataset and on average.

    Each difference has a paired-bootstrap 95% interval (same resampled seeds and items for A and B); the
    McNemar test on the target's predictions pools every paired (seed, item). As in Table 2, the ``Average``
    rows leave out the OOD test sets (``--ood``), which are still compared one by one.
    """
    found = cells(rows, ledgers)
    ood = set(rows.dataset[rows.dataset != rows.train_dataset])  # shown per dataset, kept out of the Average
    labels = {k[2] for k in found}
    for label in (label_a, label_b):
        if label not in labels:
            raise UserError(f"No runs with ledgers of {label!r} in these results.",
                            f"methods with ledgers: {', '.join(sorted(labels)) or 'none'} "
                            "(rows of schema 1 get theirs when their run is re-run)")
    pooled: dict[tuple[str, str, int], list[tuple[np.ndarray, np.ndarray]]]
    records, diffs, pooled, seeds_of = [], {}, {}, {}
    for key, a in found.items():
        source, target, label, method, dataset, shots = key
        if label != label_a:
            continue
        b = next((c for k, c in found.items() if k[2] == label_b and (k[0], k[1], k[4], k[5]) ==
                  (source, target, dataset, shots)), None)
        if b is None:
            continue
        common = sorted(set(a.seeds) & set(b.seeds))
        if not common or not np.array_equal(a.items, b.items):
            continue
        a, b = _restrict(a, common), _restrict(b, common)
        weights = resampling_weights(dataset, a.items, common, n_boot, seed)
        va, vb = cell_metrics(a, weights), cell_metrics(b, weights)
        delta = {m: va[m] - vb[m] for m in ("base", "new", "H", "nfr")}
        if dataset not in ood:
            diffs[(source, target, shots, dataset)] = (va, vb)
            seeds_of[(source, target, shots, dataset)] = len(common)
            pooled.setdefault((source, target, shots), []).append((a.new.ravel(), b.new.ravel()))
        only_a, only_b, p = mcnemar(a.new.ravel(), b.new.ravel())
        records.append({"source": source, "target": target, "shots": shots, "dataset": dataset, "seeds": len(common),
                        **_delta_row(delta), "a_only_right": only_a, "b_only_right": only_b, "mcnemar_p": p})
    for (source, target, shots), parts in pooled.items():
        keys = [k for k in diffs if k[:3] == (source, target, shots)]
        means = [{m: np.mean([diffs[k][side][m] for k in keys], axis=0) for m in ("base", "new", "nfr")}
                 for side in (0, 1)]
        for m in means:  # H of the averaged Base and New, as on the Average rows of Table 2
            m["H"] = harmonic(m["base"], m["new"])
        mean = {m: means[0][m] - means[1][m] for m in ("base", "new", "H", "nfr")}
        only_a, only_b, p = mcnemar(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
        records.append({"source": source, "target": target, "shots": shots, "dataset": "Average",
                        "seeds": min(seeds_of[k] for k in keys),
                        **_delta_row(mean), "a_only_right": only_a, "b_only_right": only_b, "mcnemar_p": p})
    return pd.DataFrame(records)


def _restrict(cell: Cell, seeds: list[int]) -> Cell:
    rows = [cell.seeds.index(s) for s in seeds]

    def pick(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else x[rows]

    # base and new are arrays, so pick gives arrays
    return Cell(seeds=seeds, items=cell.items, base=cast(np.ndarray, pick(cell.base)),
                new=cast(np.ndarray, pick(cell.new)), zs=pick(cell.zs),
                oracle=pick(cell.oracle), labels=cell.labels)


def _delta_row(delta: dict[str, np.ndarray]) -> dict[str, float]:
    row = {}
    for name, v in delta.items():
        row[f"d_{name}"] = float(v[0])
        row[f"d_{name}_lo"], row[f"d_{name}_hi"] = interval(v[1:])
    return row


def cost_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (source, label, shots): trainable parameters, mean fit seconds per run, device, image encoder needed.

    A run's fit time is the largest ``fit_seconds`` among its rows (rows written when a saved module was reused
    say 0). Columns unknown for schema-1 rows stay NA.
    """
    base = rows[(rows.role == "base") & (rows.dataset == rows.train_dataset)]
    per_run = rows.groupby("run_id").fit_seconds.max()
    df = base.assign(fit_seconds=base.run_id.map(per_run),
                     label=[method_label(m, v) for m, v in zip(base.method, base.method_variant)])
    return df.groupby(["source", "label", "shots"]).agg(
        trainable_params=("trainable_params", "max"), fit_seconds=("fit_seconds", "mean"),
        device=("device", lambda d: ",".join(sorted(set(d)))),
        needs_image_encoder=("needs_image_encoder", "max")).reset_index()


def summarize_with_intervals(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame], n_boot: int = N_BOOT,
                             seed: int = 0) -> pd.DataFrame:
    """:func:`upgradebench.results.summarize` (mean / std over seeds) plus the 95% interval of every metric.

    Cells without ledgers keep their means and standard deviations; their intervals and ledger metrics are NaN.
    Reuse gain and recovery ratio are also computed from the rows' top-1 when ledgers are missing.
    ``ledger_datasets`` counts, on the ``Average`` rows, the datasets (of ``datasets``) whose runs all have
    ledgers; where some lack them, the Average's intervals and ledger metrics are NaN, since they would average
    other datasets than its Base and New.
    """
    summary = summarize(rows)
    key = ["source", "target", "label", "method", "dataset", "shots"]
    extra = compat_summary(rows, ledgers, n_boot, seed)
    keep = [c for c in extra.columns if c not in summary.columns or c in key]
    keep = [c for c in keep if c not in ("seeds", "n_test")]
    out = summary.merge(extra[keep], on=key, how="left")
    if out.empty:
        return out
    ood = set(rows.dataset[rows.dataset != rows.train_dataset])
    per_dataset = extra[(extra.dataset != "Average") & ~extra.dataset.isin(ood)]
    ledgered = per_dataset.groupby(key[:4] + ["shots"]).size()
    average = out.dataset == "Average"
    out["ledger_datasets"] = [int(ledgered.get((r.source, r.target, r.label, r.method, r.shots), 0)) if a else np.nan
                              for r, a in zip(out.itertuples(), average)]
    partial = average & (out.ledger_datasets < out.datasets)
    out.loc[partial, [f"{m}{s}" for m in METRICS for s in ("_lo", "_hi")] +
            ["nfr", "pfr", "btc", "nfr_zs", "reuse_gain", "recovery"]] = math.nan  # reuse gain, recovery: from rows
    zs = out[out.method == ZERO_SHOT].set_index(["source", "target", "dataset", "shots"]).new
    new = out.set_index(["source", "target", "label", "dataset", "shots"]).new
    oracle = _oracle_means(rows)
    for i, r in out.iterrows():
        z = zs.get((r.source, r.target, r.dataset, r.shots))
        if z is None:
            continue
        if math.isnan(r.reuse_gain):
            out.at[i, "reuse_gain"] = r.new - z
        if not math.isnan(r.recovery):
            continue
        if r.dataset == "Average":
            # over the datasets that have oracle runs only: an average over other datasets has no ceiling
            datasets = [d for (t, label, d, shots) in oracle if (t, label, shots) == (r.target, r.label, r.shots)]
            pairs = [(new.get((r.source, r.target, r.label, d, r.shots)), zs.get((r.source, r.target, d, r.shots)),
                      oracle[(r.target, r.label, d, r.shots)]) for d in datasets]
            pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
            if not pairs:
                continue
            gain = sum(n - z_d for n, z_d, _ in pairs) / len(pairs)
            room = sum(o - z_d for _, z_d, o in pairs) / len(pairs)
        else:
            o = oracle.get((r.target, r.label, r.dataset, r.shots))
            if o is None:
                continue
            gain, room = r.new - z, o - z
        out.at[i, "recovery"] = recovery_ratio(gain, room)
    return out


def _oracle_means(rows: pd.DataFrame) -> dict[tuple, float]:
    """Mean top-1 of the oracle rows per (target, label, dataset, shots), in-distribution datasets only."""
    oracle = rows[(rows.role == ORACLE) & (rows.dataset == rows.train_dataset)]
    if oracle.empty:
        return {}
    oracle = oracle.assign(label=[method_label(m, v) for m, v in zip(oracle.method, oracle.method_variant)])
    per = oracle.groupby(["eval_model", "label", "dataset", "shots"]).top1.mean()
    return {k: float(v) for k, v in per.items()}
