"""Which result rows each figure and table reads, chosen from the rows alone (no method code is imported).

- The *main* comparison (Table 2, Table 8, Fig. 2a, the leaderboard ranking) uses each method's reference
  configuration (``method_variant == ""``) on the dataset it was trained on.
- *OOD* rows (Table 3) are those whose ``dataset`` differs from ``train_dataset``.
- A *sweep* (Fig. 2d, Fig. 4, Tables 4-7) varies one or more config keys of one method while every other
  key stays fixed; the keys are read from ``method_config`` (JSON), so sweeps run with extra overrides
  (e.g. fewer epochs) are found as well.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from upgradebench.guard import safe_name
from upgradebench.metrics import LedgerKey, summarize_with_intervals
from upgradebench.results import in_distribution, method_label, summarize
from upgradebench.roles import ORACLE, ZERO_SHOT


def main_summary(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`~upgradebench.results.summarize` of the reference configurations, in distribution."""
    rows = in_distribution(df)
    return summarize(rows[rows.method_variant == ""])


def main_summary_with_intervals(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame]) -> pd.DataFrame:
    """:func:`main_summary` with every compatibility metric and its 95% interval (oracle rows kept for recovery)."""
    rows = in_distribution(df)
    return summarize_with_intervals(rows[(rows.method_variant == "") | (rows.role == ORACLE)], ledgers)


def ordered_pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(source, target) pairs, the one with the most summary rows first (the paper's main pair). A pair where only
    zero-shot has New rows (every module refused, e.g. unchanged across a width change) has nothing to compare and
    is left out, unless no pair has more (results of zero-shot alone)."""
    if summary.empty:
        return []
    compared = summary.groupby(["source", "target"]).method.transform(lambda m: (m != ZERO_SHOT).any())
    if compared.any():
        summary = summary[compared]
    counts = summary.groupby(["source", "target"]).size().reset_index(name="n")
    counts = counts.sort_values(["n", "source", "target"], ascending=[False, True, True])
    return list(zip(counts.source, counts.target))


def ordered_labels(labels: Sequence[str]) -> list[str]:
    """Method labels with zero-shot first, the rest alphabetical."""
    return sorted(set(labels), key=lambda label: (label != ZERO_SHOT, label))


def ordered_datasets(datasets: Sequence[str]) -> list[str]:
    """``Average`` first, then the datasets alphabetically (the paper's Table 2 order)."""
    names = sorted(set(datasets) - {"Average"})
    return (["Average"] if "Average" in set(datasets) else []) + names


def zeroshot_accuracy(df: pd.DataFrame, dataset: str, model: str) -> float | None:
    """Zero-shot top-1 of ``model`` on ``dataset`` (mean over its rows), or None without such rows."""
    hit = df[(df.method == ZERO_SHOT) & (df.dataset == dataset) & (df.eval_model == model)]
    return float(hit.top1.mean()) if len(hit) else None


def slug(*parts: str) -> str:
    """A file-name-safe join of names (``toy-clip--toy-eva``), each part as run folders name it."""
    return "--".join(safe_name(p) for p in parts)


def sweep_summary(df: pd.DataFrame, method: str, knobs: Sequence[str]) -> pd.DataFrame:
    """Base / New / H per value of the config keys ``knobs`` of ``method``, the other keys held fixed.

    Per (source, train dataset, shots) the runs are grouped by their config without ``knobs``; the group
    of the reference configuration is used when it varies the knobs, else the group with the most values.
    Returns the per-dataset rows of :func:`summarize` plus one column per knob; sections where the knobs
    take a single value are dropped (nothing was swept there).
    """
    rows = in_distribution(df[df.method == method])
    if rows.empty:
        return pd.DataFrame()
    configs = rows.method_config.map(json.loads)
    # config values as canonical JSON, so that any JSON value (lists included) can be grouped
    rows = rows.assign(
        _value=configs.map(lambda c: json.dumps([c.get(k) for k in knobs])),
        _rest=configs.map(lambda c: json.dumps({k: v for k, v in c.items() if k not in knobs}, sort_keys=True)),
    )
    reference = set(rows[rows.method_variant == ""]._rest)
    chosen = []
    for _, section in rows.groupby(["source", "train_dataset", "shots"]):
        spread = section.groupby("_rest")._value.nunique()
        spread = spread[spread > 1]
        if spread.empty:
            continue
        preferred = [r for r in spread.index if r in reference]
        best = preferred[0] if preferred else spread.sort_values(ascending=False, kind="stable").index[0]
        chosen.append(section[section._rest == best])
    if not chosen:
        return pd.DataFrame()
    picked = pd.concat(chosen)
    values = {method_label(m, v): json.loads(value)
              for m, v, value in zip(picked.method, picked.method_variant, picked._value)}
    out = summarize(picked.drop(columns=["_value", "_rest"]))
    out = out[out.dataset != "Average"].copy()
    for i, knob in enumerate(knobs):
        out[knob] = [values[label][i] for label in out.label]
    return out.reset_index(drop=True)
