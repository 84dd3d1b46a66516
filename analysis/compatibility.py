"""Compatibility beyond top-1, as a table and a figure (metrics and intervals: ``upgradebench.metrics``).

- ``compat`` table: per (pair, shots), every reference method's average Base, New, H, NFR, BTC, NFR against
  the target's zero-shot, reuse gain and recovery ratio, each ``mean [95% CI]``.
- ``fig-base-new``: Base against New per method with 95% intervals as error bars, the source's and the
  target's zero-shot accuracy as reference lines; one figure per (pair, shots).
Both read the prediction ledgers; without them (schema-1 folders) the intervals and ledger metrics are
missing and the table says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import pandas as pd
from matplotlib.figure import Figure

from upgradebench.metrics import LedgerKey
from upgradebench.roles import ZERO_SHOT

from .figures import PALETTE, plot_style, save
from .outputs import MissingInput, Outputs
from .selection import main_summary_with_intervals, ordered_labels, ordered_pairs, slug
from .tables import Cell, Table, TableDoc, write_doc

COMPAT_METRICS = (("base", "Base"), ("new", "New"), ("H", "H"), ("nfr", "NFR"), ("btc", "BTC"),
                  ("nfr_zs", "NFR vs ZS"), ("reuse_gain", "Reuse gain"), ("recovery", "Recovery"))


def interval_text(mean: float, lo: float, hi: float, digits: int = 2) -> str | None:
    """``mean [lo, hi]``, the mean alone without an interval, None when the mean is missing."""
    if mean is None or math.isnan(mean):
        return None
    if lo is None or math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def compat_table(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame]) -> TableDoc:
    """The ``compat`` table: averages over datasets of every metric with its interval, per pair and shots."""
    summary = main_summary_with_intervals(df, ledgers)
    pairs = ordered_pairs(summary)
    if not pairs:
        raise MissingInput("no paired Base/New rows of reference configurations")
    tables = []
    for source, target in pairs:
        part = summary[(summary.source == source) & (summary.target == target) & (summary.dataset == "Average")]
        for shots, avg in part.groupby("shots"):
            cells = avg.set_index("label")
            # an Average over fewer datasets than the others' is another quantity: marked, as in Table 2
            partial = set(cells.index[cells.datasets < cells.datasets.max()])
            # the cast widens the label's one-item list to the cells it is joined with
            rows: list[list[Cell]] = [[cast(Cell, f"{label}*" if label in partial else label)] +
                                      [interval_text(float(cells.loc[label, m]), cells.loc[label, f"{m}_lo"],
                                                     cells.loc[label, f"{m}_hi"], 3 if m == "recovery" else 2)
                                       for m, _ in COMPAT_METRICS] for label in ordered_labels(avg.label)]
            heading = f"{source} → {target}, {int(shots)} shots, average over datasets"
            if partial:
                heading += f" (* average over fewer datasets: {', '.join(sorted(partial))})"
            tables.append(Table(heading, ["Method", *(name for _, name in COMPAT_METRICS)], rows, rank="column"))
    return TableDoc("compat", "Compatibility beyond top-1",
                    "Mean [95% interval: paired bootstrap over test items and seeds] of each metric, in percent "
                    "(recovery: a ratio); definitions and sources in docs/metrics.md. – = needs prediction "
                    "ledgers (or, for recovery, oracle runs) the results do not have.", tables)


MARKERS = ("o", "s", "^", "D")


def fig_base_new(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame], out: Path) -> list[Path]:
    """Base against New per method (averages over datasets, 95% intervals as error bars), zero-shot lines."""
    summary = main_summary_with_intervals(df, ledgers)
    pairs = ordered_pairs(summary)
    if not pairs:
        raise MissingInput("no paired Base/New rows of reference configurations")
    written = []
    for source, target in pairs:
        part = summary[(summary.source == source) & (summary.target == target) & (summary.dataset == "Average")]
        for shots, avg in part.groupby("shots"):
            with plot_style():
                fig = Figure(figsize=(6.4, 5.0))
                ax = fig.subplots()
                fitted = [label for label in ordered_labels(avg.label) if label != ZERO_SHOT]
                for label in [ZERO_SHOT, *fitted] if ZERO_SHOT in set(avg.label) else fitted:
                    r = avg[avg.label == label].iloc[0]
                    xerr = [[r.base - r.base_lo], [r.base_hi - r.base]] if not math.isnan(r.base_lo) else None
                    yerr = [[r.new - r.new_lo], [r.new_hi - r.new]] if not math.isnan(r.new_lo) else None
                    if label == ZERO_SHOT:  # the reference, in black, so that no method shares its colour
                        style: dict[str, Any] = {"fmt": "*", "color": "0.1", "markersize": 10}
                    else:  # the palette has 10 colours: the marker changes with each round of them
                        i = fitted.index(label)
                        style = {"fmt": MARKERS[i // len(PALETTE) % len(MARKERS)], "color": PALETTE[i % len(PALETTE)]}
                    ax.errorbar(r.base, r.new, xerr=xerr, yerr=yerr, capsize=3, label=label, **style)
                zs = avg[avg.label == ZERO_SHOT]
                if len(zs):
                    ax.axhline(float(zs.new.iloc[0]), color="0.3", linestyle="--", linewidth=1.0,
                               label=f"zero-shot on {target}")
                    ax.axvline(float(zs.base.iloc[0]), color="0.6", linestyle=":", linewidth=1.0,
                               label=f"zero-shot on {source}")
                ax.set_xlabel(f"Base: top-1 on {source} (%)")
                ax.set_ylabel(f"New: top-1 on {target} (%)")
                ax.set_title(f"{source} → {target}, {int(shots)} shots: mean over datasets, 95% intervals")
                ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
                written += save(fig, out, f"fig-base-new-{slug(source, target)}-{int(shots)}shot")
    return written


def write_compatibility(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame], out: str | Path) -> Outputs:
    """Write the ``compat`` table and the Base-vs-New figures into ``out``; what cannot be made is skipped."""
    out = Path(out)
    outputs = Outputs()
    outputs.attempt("compat", lambda: write_doc(compat_table(df, ledgers), out))
    outputs.attempt("fig-base-new", lambda: fig_base_new(df, ledgers, out))
    return outputs
