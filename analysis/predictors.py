"""Drift predictors: cheap measures of a (source, target) pair, computable before any module is fitted, and how well
each predicts the pair's reuse gain (definitions: ``docs/metrics.md``, "Drift predictors").

Measures of a pair:

- ``embedding_residual``: relative residual of the token-embedding map fitted on the shared vocabulary
  (:func:`upgradebench.spaces.token_map`); 0 when the target's token table is a linear image of the source's.
- ``text_cka``: linear CKA between the source's and the target's zero-shot class text features of each task,
  averaged over tasks (1: the class geometry is the same up to rotation and scale).
- ``zeroshot_agreement``: share of test items on which the source's and the target's zero-shot predict the same
  class (from the zero-shot runs' prediction ledgers), averaged over seeds and tasks.

The first two load models (:func:`model_measures`); the third and the statistics read rows and ledgers only, so
they are tested on synthetic frames. Per measure, :func:`predictor_table` gives Spearman's rho across pairs between
the measure and the pair's mean reuse gain under identity (mean over the methods' reference configurations,
zero-shot aside), with a percentile bootstrap interval over pairs (seeded: the same inputs give the same interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from upgradebench.metrics import N_BOOT, LedgerKey, interval
from upgradebench.results import in_distribution
from upgradebench.roles import BASE, IDENTITY, NEW, ZERO_SHOT

from .figures import PALETTE, plot_style, save
from .matrix import kind_of
from .outputs import MissingInput

if TYPE_CHECKING:
    from upgradebench.data.dataset import Dataset
    from upgradebench.models import VLM

MEASURES = ("embedding_residual", "text_cka", "zeroshot_agreement")
MIN_PAIRS = 3
"""Pairs a correlation needs: with two, any rank correlation is +1 or -1 whatever the measure."""


# ---- measures that load models -------------------------------------------------------------------------------------
def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al., ICML 2019) of two feature matrices ``[n, Dx]``, ``[n, Dy]`` of the same n
    items: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred features; NaN when one is constant."""
    xc = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    yc = np.asarray(y, dtype=np.float64) - np.mean(y, axis=0)
    denominator = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / denominator) if denominator > 0 else float("nan")


def model_measures(source: VLM, target: VLM, datasets: Sequence[Dataset]) -> dict[str, float]:
    """``embedding_residual`` and ``text_cka`` (mean over ``datasets``, each with its class names and template) of
    a loaded pair."""
    from upgradebench.prompting import zeroshot_text_features
    from upgradebench.spaces import token_map

    ckas = [linear_cka(zeroshot_text_features(source, d.classnames, d.template).cpu().numpy(),
                       zeroshot_text_features(target, d.classnames, d.template).cpu().numpy()) for d in datasets]
    return {"embedding_residual": float(token_map(source, target).residual),
            "text_cka": float(np.nanmean(ckas)) if ckas else float("nan")}


# ---- measures from rows and ledgers --------------------------------------------------------------------------------
def zeroshot_agreement(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame]) -> pd.DataFrame:
    """Per (source, target): share (%) of test items both models' zero-shot predict alike, from each zero-shot run's
    ledgers on the source (its Base row) and on the target (its New row), averaged over runs of a dataset, then
    over in-distribution datasets. Columns: source, target, zeroshot_agreement, datasets."""
    zs = in_distribution(rows[rows.method == ZERO_SHOT])
    base = zs[zs.role == BASE][["run_id", "source", "dataset", "eval_model"]]
    new = zs[zs.role == NEW][["run_id", "dataset", "eval_model"]].rename(columns={"eval_model": "target"})
    records = []
    for r in base.merge(new, on=["run_id", "dataset"]).itertuples():
        on_source = ledgers.get((r.run_id, r.eval_model, r.dataset))
        on_target = ledgers.get((r.run_id, r.target, r.dataset))
        if on_source is None or on_target is None:
            continue  # rows of schema 1: no ledger, no agreement (missing, never 0)
        both = on_source[["item", "pred"]].merge(on_target[["item", "pred"]], on="item")
        records.append({"source": r.source, "target": r.target, "dataset": r.dataset,
                        "agree": 100 * float((both.pred_x == both.pred_y).mean()) if len(both) else np.nan})
    if not records:
        return pd.DataFrame(columns=["source", "target", "zeroshot_agreement", "datasets"])
    per_dataset = pd.DataFrame(records).groupby(["source", "target", "dataset"]).agree.mean().reset_index()
    return per_dataset.groupby(["source", "target"]).agg(
        zeroshot_agreement=("agree", "mean"), datasets=("dataset", "nunique")).reset_index()


def identity_gains(table: pd.DataFrame) -> pd.DataFrame:
    """Per (source, target) of a matrix table (:func:`upgradebench.analysis.matrix.matrix_table`): the mean reuse
    gain of the modules carried unchanged (mapper identity), over the reference configurations of the methods but
    zero-shot (variants are ablations, often on fewer datasets). Columns: source, target, kind, reuse_gain,
    methods."""
    part = table[(table.mapper == IDENTITY) & (table.method != ZERO_SHOT) & (table.variant == "")]
    part = part.dropna(subset=["reuse_gain"])
    if part.empty:
        return pd.DataFrame(columns=["source", "target", "kind", "reuse_gain", "methods"])
    return part.groupby(["source", "target", "kind"]).agg(reuse_gain=("reuse_gain", "mean"),
                                                          methods=("method", "nunique")).reset_index()


# ---- statistics ----------------------------------------------------------------------------------------------------
def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (ties share their mean rank); NaN with fewer than
    :data:`MIN_PAIRS` points or when either side is constant."""
    a, b = pd.Series(x, dtype=float).rank(), pd.Series(y, dtype=float).rank()
    if len(a) < MIN_PAIRS or a.nunique() < 2 or b.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman_interval(x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of Spearman's rho over ``n_boot`` resamplings of the pairs with replacement (seeded);
    resamples whose ranks are constant are left out (:func:`upgradebench.metrics.interval`)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < MIN_PAIRS:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(xs), size=(n_boot, len(xs)))
    return interval(np.array([spearman(xs[p], ys[p]) for p in picks]))


EXACT_UP_TO = 8
"""Up to this many pairs the permutation p-value enumerates every order (8! = 40320); beyond, it samples."""


def spearman_p(x: Sequence[float], y: Sequence[float], samples: int = N_BOOT, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: the share of orders of ``y`` whose |rho| is at least the
    observed one (every order up to :data:`EXACT_UP_TO` pairs, else ``samples`` seeded ones). With few pairs the
    bootstrap interval is degenerate (a perfect order resampled stays perfect); this says how often chance alone
    orders them as well: 2/24 = 0.083 for a perfect order of 4 pairs."""
    import itertools

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    observed = spearman(xs, ys)
    if not np.isfinite(observed):
        return float("nan")
    if len(ys) <= EXACT_UP_TO:
        orders = [np.array(p) for p in itertools.permutations(range(len(ys)))]
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(len(ys)) for _ in range(samples)]
    rhos = np.array([spearman(xs, ys[order]) for order in orders])
    return float(np.mean(np.abs(rhos) >= abs(observed) - 1e-12))


def predictor_table(measures: pd.DataFrame, gains: pd.DataFrame, n_boot: int = N_BOOT,
                    seed: int = 0) -> pd.DataFrame:
    """Per measure (a column of ``measures``, keyed by source and target): the pairs that have both the measure and
    a reuse gain (``gains``: :func:`identity_gains`), Spearman's rho, its bootstrap interval and its permutation
    p-value (:func:`spearman_p`). Columns: measure, pairs, rho, rho_lo, rho_hi, p."""
    joined = measures.merge(gains[["source", "target", "reuse_gain"]], on=["source", "target"])
    records = []
    for measure in [m for m in MEASURES if m in measures]:
        both = joined.dropna(subset=[measure, "reuse_gain"])
        rho = spearman(both[measure], both.reuse_gain)
        lo, hi = spearman_interval(both[measure], both.reuse_gain, n_boot, seed) if np.isfinite(rho) \
            else (float("nan"), float("nan"))
        records.append({"measure": measure, "pairs": len(both), "rho": rho, "rho_lo": lo, "rho_hi": hi,
                        "p": spearman_p(both[measure], both.reuse_gain, n_boot, seed)})
    return pd.DataFrame(records, columns=["measure", "pairs", "rho", "rho_lo", "rho_hi", "p"])


def pair_measures(rows: pd.DataFrame, ledgers: dict[LedgerKey, pd.DataFrame],
                  loaded: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every measure per (source, target, kind): zero-shot agreement from the ledgers, joined with ``loaded`` (columns
    source, target, embedding_residual, text_cka from :func:`model_measures`) where given."""
    found = zeroshot_agreement(rows, ledgers).drop(columns="datasets")
    if loaded is not None and len(loaded):
        found = found.merge(loaded, on=["source", "target"], how="outer")
    found.insert(2, "kind", [kind_of(s, t) for s, t in zip(found.source, found.target)])
    return found


# ---- figure --------------------------------------------------------------------------------------------------------
TITLES = {"embedding_residual": "token-embedding map residual", "text_cka": "text-feature CKA (zero-shot classes)",
          "zeroshot_agreement": "zero-shot agreement (%)"}


def fig_predictors(measures: pd.DataFrame, gains: pd.DataFrame, stats: pd.DataFrame, out: Path) -> list[Path]:
    """One scatter panel per measure: each pair's measure against its mean reuse gain under identity, the pair
    named beside its point, rho and its interval in the title."""
    joined = measures.merge(gains[["source", "target", "reuse_gain"]], on=["source", "target"])
    shown = [m for m in stats.measure if joined[m].notna().any()]
    if not shown:
        raise MissingInput("no pair has both a drift measure and a reuse gain under identity")
    with plot_style():
        fig = Figure(figsize=(max(7.0, 4.2 * len(shown)), 4.0))
        axes = np.atleast_1d(fig.subplots(1, len(shown), squeeze=False)[0])
        for ax, measure in zip(axes, shown):
            part = joined.dropna(subset=[measure, "reuse_gain"])
            ax.scatter(part[measure], part.reuse_gain, color=PALETTE[0], s=40)
            for r in part.itertuples():
                ax.annotate(f"{r.source}→{r.target}", (getattr(r, measure), r.reuse_gain), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            ax.axhline(0.0, color="0.5", linestyle="--", linewidth=1)
            s = stats[stats.measure == measure].iloc[0]
            rho = "n/a" if np.isnan(s.rho) else f"{s.rho:+.2f}"
            band = "" if np.isnan(s.rho_lo) else f" [{s.rho_lo:+.2f}, {s.rho_hi:+.2f}]"
            p = "" if np.isnan(s.p) else f", permutation p = {s.p:.3f}"
            ax.set_title(f"Spearman ρ = {rho}{band}\n{int(s.pairs)} pairs{p}", fontsize=9)
            ax.set_xlabel(TITLES[measure])
        axes[0].set_ylabel("mean reuse gain under identity (points)")
        fig.suptitle("Drift predictors: measured before fitting, against the reuse gain of modules carried unchanged",
                     fontsize=10)
        fig.tight_layout()
        return save(fig, out, "fig-predictors")
