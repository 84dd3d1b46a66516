"""The upgrade matrix: for every (method, upgrade kind, mapper), what a user reads before reusing a module.

One row per (source, target, upgrade kind, method, mapper, budget, shots), each an average over seeds and the
in-distribution datasets (definitions: ``docs/metrics.md``, "Upgrade matrix"):

- ``method`` (its label, ``variant`` the config keys that differ from the defaults, as in every table);
- ``new``: top-1 of the module carried to the target (by the mapper; ``identity``: unchanged);
- ``nfr``: negative flip rate against the source (right on the run's Base row, wrong on this row);
- ``reuse_gain``: ``new`` minus the target's zero-shot (the ``zeroshot`` method's row on that model);
- ``recovery``: the recovery ratio against the same method fitted on the target (rows of role ``oracle``);
- cost: mean ``map_seconds`` and ``mapper_shots`` of the mapped rows (0 for identity); seeds and datasets counted.

Nothing is re-derived here: each mapper's rows are presented to :func:`upgradebench.metrics.summarize_with_intervals`
as the "new" rows of their runs (:func:`mapper_view`), so NFR, reuse gain and recovery with their paired-bootstrap
intervals are the ones every other table shows. A chained mapping (``mapper_config`` with a ``"via"`` key) is a
mapper of its own, labelled ``"vocab-map via toy-eva"``. The figure (:func:`fig_matrix`) shows the reuse gain per
method and upgrade kind, one panel per mapper; a cell without a row (the mapper refused the pair, or it was not
run) is hatched grey, never 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from upgradebench.metrics import N_BOOT, LedgerKey, summarize_with_intervals
from upgradebench.models.upgrades import upgrade_kinds, upgrade_of
from upgradebench.plan import mapper_label
from upgradebench.roles import BASE, IDENTITY, MAPPED, NEW, ORACLE, ZERO_SHOT

from .outputs import MissingInput, Outputs
from .selection import ordered_labels

if TYPE_CHECKING:
    from matplotlib.patches import Rectangle

MappedLedgerKey = tuple[str, str, str, str]  # (run_id, eval_model, dataset, mapper label): read_mapped_ledgers
BUDGETS = ("none", "unlabeled", "labeled")
"""Target data a mapper may use, cheapest first: the order of the matrix's mappers."""
UNKNOWN_KIND = "unknown"
IDENTITY_BUDGET = "none"

COLUMNS = ["source", "target", "kind", "method", "variant", "mapper", "mapper_config", "budget", "shots",
           "new", "new_lo", "new_hi", "nfr", "nfr_lo", "nfr_hi", "reuse_gain", "reuse_gain_lo", "reuse_gain_hi",
           "recovery", "recovery_lo", "recovery_hi", "map_seconds", "mapper_shots", "seeds", "datasets"]


def has_mapped_rows(rows: pd.DataFrame) -> bool:
    """Whether ``rows`` hold any row evaluated through a mapper (role ``mapped``)."""
    return "role" in rows and bool((rows.role == MAPPED).any())


def matrix_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows the matrix (and the drift predictors) read: those of the datasets that have mapped rows, so that every
    mapper of a matrix row, and every pair's measures, are on the same tasks (the unmapped rows of a wider grid, the
    main grid's six tasks, would otherwise be averaged over other datasets than the mapped ones); all rows when none
    is mapped."""
    if not has_mapped_rows(rows):
        return rows
    return rows[rows.dataset.isin(set(rows[rows.role == MAPPED].dataset))]


def mapper_title(mapper: str, config: str) -> str:
    """The name a mapper is shown under: ``vocab-map``, or ``vocab-map via toy-eva`` for a chained mapping."""
    via = _config(config).get("via")
    return f"{mapper} via {via}" if via else mapper


def _config(config: str) -> dict:
    parsed = json.loads(config or "{}")
    return parsed if isinstance(parsed, dict) else {}


def mappers_of(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (mapper, mapper_config) of ``rows``, identity first, then by budget, name and chaining."""
    if not has_mapped_rows(rows):
        return [(IDENTITY, "{}")]
    mapped = rows[rows.role == MAPPED].drop_duplicates(["mapper", "mapper_config"])
    found = {(r.mapper, r.mapper_config): r.mapper_budget for r in mapped.itertuples()}

    def order(key: tuple[str, str]) -> tuple:
        budget = found[key]
        return (BUDGETS.index(budget) if budget in BUDGETS else len(BUDGETS), "via" in _config(key[1]), key)

    return [(IDENTITY, "{}"), *sorted(found, key=order)]


def mapper_view(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame],
                mapped_ledgers: dict[MappedLedgerKey, pd.DataFrame], mapper: str,
                config: str) -> tuple[pd.DataFrame, dict[LedgerKey, pd.DataFrame]]:
    """The rows and ledgers of one mapper as :func:`upgradebench.metrics.cells` reads a plain upgrade: its rows
    (role ``mapped``) stand as the ``new`` rows of their runs, beside the runs' Base rows, the oracle rows and the
    target's zero-shot rows; the unmapped New rows of other methods are left out. ``identity``: the rows without
    the mapped ones. A mapped row's ledger (``mapped_ledgers``, :func:`upgradebench.metrics.read_mapped_ledgers`)
    takes the place of its run's unmapped one on that model and dataset.
    """
    if mapper == IDENTITY:
        return rows[rows.role != MAPPED], ledgers
    mine = rows[(rows.role == MAPPED) & (rows.mapper == mapper) & (rows.mapper_config == config)
                & (rows.method != ZERO_SHOT)]  # zero-shot has no module to map: its unmapped rows are the reference
    kept = rows[rows.role.isin([BASE, ORACLE]) | ((rows.role == NEW) & (rows.method == ZERO_SHOT))]
    view = pd.concat([kept, mine.assign(role=NEW)], ignore_index=True)
    moved = dict(ledgers)
    label = mapper_label(mapper, config)
    for r in mine.itertuples():
        key = (r.run_id, r.eval_model, r.dataset)
        ledger = mapped_ledgers.get((*key, label))
        if ledger is None:
            moved.pop(key, None)  # never the unmapped module's predictions under the mapper's name
        else:
            moved[key] = ledger
    return view, moved


def kind_of(source: str, target: str) -> str:
    """The upgrade kind of a pair (``upgrades.json``), ``unknown`` for a pair the table does not know."""
    upgrade = upgrade_of(source, target)
    return upgrade.kind if upgrade is not None else UNKNOWN_KIND


def matrix_table(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame],
                 mapped_ledgers: dict[MappedLedgerKey, pd.DataFrame] | None = None, n_boot: int = N_BOOT,
                 seed: int = 0) -> pd.DataFrame:
    """One row per (source, target, kind, method label, mapper, budget, shots): :data:`COLUMNS`, averages over seeds and
    the in-distribution datasets that have mapped rows (every mapper on the same tasks; all of them when none is
    mapped) with 95% intervals where the runs have ledgers (``ledgers``:
    :func:`upgradebench.metrics.read_ledgers`, ``mapped_ledgers``: :func:`~upgradebench.metrics.read_mapped_ledgers`;
    module docstring)."""
    rows = matrix_rows(rows)
    records = []
    for order, (mapper, config) in enumerate(mappers_of(rows)):
        view, view_ledgers = mapper_view(rows, ledgers, mapped_ledgers or {}, mapper, config)
        summary = summarize_with_intervals(view, view_ledgers, n_boot, seed)
        if summary.empty:
            continue
        average = summary[summary.dataset == "Average"]
        if mapper != IDENTITY:
            average = average[average.method != ZERO_SHOT]
        cost = _cost(rows, mapper, config)
        budget = IDENTITY_BUDGET if mapper == IDENTITY else _budget(rows, mapper, config)
        for r in average.itertuples():
            spent = cost.get((r.source, r.target, r.label, r.shots), (0.0, 0.0))
            records.append({"source": r.source, "target": r.target, "kind": kind_of(r.source, r.target),
                            "method": r.label, "variant": r.label[len(r.method) + 1:-1] if r.label != r.method else "",
                            "mapper": mapper_title(mapper, config), "mapper_config": config,
                            "budget": budget, "shots": int(r.shots),
                            **{f"{m}{s}": float(getattr(r, f"{m}{s}")) for m in ("new", "nfr", "reuse_gain", "recovery")
                               for s in ("", "_lo", "_hi")},
                            "map_seconds": spent[0], "mapper_shots": spent[1], "seeds": int(r.seeds),
                            "datasets": int(r.datasets), "_order": order})
    table = pd.DataFrame(records, columns=[*COLUMNS, "_order"])
    # a pair's rows together, each method's mappers from identity to the largest budget
    return table.sort_values(["source", "target", "method", "_order"], kind="stable",
                             ignore_index=True).drop(columns="_order")


def _budget(rows: pd.DataFrame, mapper: str, config: str) -> str:
    budgets = rows[(rows.role == MAPPED) & (rows.mapper == mapper) & (rows.mapper_config == config)].mapper_budget
    return ",".join(sorted(set(budgets.astype(str))))


def _cost(rows: pd.DataFrame, mapper: str, config: str) -> dict[tuple, tuple[float, float]]:
    """Mean ``map_seconds`` and ``mapper_shots`` of a mapper's in-distribution rows per (source, target, label,
    shots); empty for identity (nothing is fitted)."""
    if mapper == IDENTITY:
        return {}
    from upgradebench.results import in_distribution, method_label

    mine = in_distribution(rows[(rows.role == MAPPED) & (rows.mapper == mapper) & (rows.mapper_config == config)])
    mine = mine.assign(label=[method_label(m, v) for m, v in zip(mine.method, mine.method_variant)],
                       map_seconds=mine.map_seconds.astype(float), mapper_shots=mine.mapper_shots.astype(float))
    cost = mine.groupby(["source", "eval_model", "label", "shots"]).agg(
        map_seconds=("map_seconds", "mean"), mapper_shots=("mapper_shots", "mean"))
    return {k: (float(v.map_seconds), float(v.mapper_shots)) for k, v in cost.iterrows()}


# ---- the figure ----------------------------------------------------------------------------------------------------
def ordered_kinds(kinds: list[str]) -> list[str]:
    """Upgrade kinds in ``upgrades.json``'s order, unknown pairs last."""
    known = list(upgrade_kinds())
    return sorted(set(kinds), key=lambda k: (known.index(k) if k in known else len(known), k))


def matrix_grid(table: pd.DataFrame, mapper: str, methods: list[str], kinds: list[str]) -> np.ndarray:
    """``[methods, kinds]`` reuse gain of one mapper (mean over the pairs of a kind); NaN where no row exists."""
    part = table[table.mapper == mapper]
    grid = np.full((len(methods), len(kinds)), np.nan)
    for (method, kind), group in part.groupby(["method", "kind"]):
        if method in methods and kind in kinds:
            gains = group.reuse_gain.dropna()
            if len(gains):
                grid[methods.index(method), kinds.index(kind)] = gains.mean()
    return grid


def panel_order(table: pd.DataFrame) -> list[str]:
    """The mapper labels of ``table`` by budget: identity, then none, unlabeled, labeled; chained after."""
    first = table.drop_duplicates("mapper")

    def order(r) -> tuple:
        budget = BUDGETS.index(r.budget) if r.budget in BUDGETS else len(BUDGETS)
        return (r.mapper != IDENTITY, budget, " via " in r.mapper, r.mapper)

    return [r.mapper for r in sorted(first.itertuples(), key=order)]


def fig_matrix(table: pd.DataFrame, out: Path) -> list[Path]:
    """The compatibility matrix per shots: methods (reference configurations) x upgrade kinds, colour = reuse gain
    (diverging, centred at 0, number written in), one panel per mapper; a hatched grey cell has no row (refused or
    not run)."""
    # imported here: the leaderboard reads the matrix table without drawing it, and matplotlib is slow to import
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .figures import plot_style, save

    table = table[(table.method != ZERO_SHOT) & (table.variant == "")]  # reference configurations, as Table 2
    if table.empty or not (table.mapper != IDENTITY).any():
        raise MissingInput("no rows of modules carried by a mapper (role 'mapped')")
    written = []
    for shots, part in table.groupby("shots"):
        mappers = panel_order(part)
        methods = ordered_labels(part.method)
        kinds = ordered_kinds(list(part.kind))
        grids = [matrix_grid(part, m, methods, kinds) for m in mappers]
        finite = [abs(v) for g in grids for v in g.ravel() if math.isfinite(v)]
        span = max(max(finite, default=1.0), 1e-6)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
        with plot_style():
            fig = Figure(figsize=(2.0 + (0.9 * len(kinds) + 0.8) * len(mappers), 3.4 + 0.4 * len(methods)))
            # room above for the title, below for the slanted kind names and the legend of absent cells
            fig.subplots_adjust(top=1 - 1.1 / fig.get_figheight(), bottom=2.0 / fig.get_figheight(), right=0.85)
            axes = np.atleast_1d(fig.subplots(1, len(mappers), sharey=True, squeeze=False)[0])
            image = None
            for ax, mapper, grid in zip(axes, mappers, grids):
                ax.grid(False)
                absent = np.where(np.isnan(grid), 1.0, np.nan)
                ax.imshow(absent, cmap="Greys", vmin=0, vmax=4, aspect="auto")  # light grey under the hatching
                image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", norm=norm, aspect="auto")
                for i, j in np.argwhere(np.isnan(grid)):
                    ax.add_patch(_hatch(j, i))
                for i, j in np.argwhere(np.isfinite(grid)):
                    value = grid[i, j]
                    ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(value) > 0.6 * span else "0.1")
                budget = part[part.mapper == mapper].budget.iloc[0]
                ax.set_title(f"{mapper}\n(target data: {budget})", fontsize=10)
                ax.set_xticks(range(len(kinds)), kinds, rotation=35, ha="right", fontsize=8)
                ax.set_yticks(range(len(methods)), methods, fontsize=8)
            axes[0].set_ylabel("method")
            assert image is not None  # at least the identity panel
            fig.colorbar(image, ax=list(axes), label="reuse gain (points)", pad=0.02)
            fig.legend(handles=[Patch(facecolor="0.85", hatch="///", edgecolor="0.5",
                                      label="no row: the mapper refused the pair, or it was not run")],
                       loc="lower center", bbox_to_anchor=(0.5, 0.0), frameon=False, fontsize=8)
            fig.suptitle(f"Upgrade matrix, {int(shots)} shots: reuse gain of a module fitted on the source\n"
                         "(mean over seeds, datasets and the pairs of a kind)", fontsize=10, y=0.99)
            written += save(fig, out, f"fig-matrix-{int(shots)}shot")
    return written


def _hatch(x: int, y: int) -> Rectangle:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.5", linewidth=0)


def write_matrix(df: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame],
                 mapped_ledgers: dict[MappedLedgerKey, pd.DataFrame], out: str | Path) -> Outputs:
    """``upgradebench figures``'s upgrade-matrix figures when the rows hold mapped ones; nothing (not even a skip)
    when they hold none, since most results folders never used a mapper."""
    outputs = Outputs()
    if has_mapped_rows(df):
        outputs.attempt("fig-matrix", lambda: fig_matrix(matrix_table(df, ledgers, mapped_ledgers), Path(out)))
    return outputs
