"""The paper's figures from result rows and a drift file, as PNG and PDF (matplotlib + seaborn).

- Fig. 2a: Base / New / H of each method's reference configuration, averaged over datasets (grouped bars,
  95% intervals where the runs have prediction ledgers), with the target's zero-shot accuracy as a
  reference line; one figure per (pair, shots).
- Fig. 2b / 2c: parameter / output-feature change per text-encoder layer (mean absolute and relative),
  one bar per target; one figure per source, from the drift parquet.
- Fig. 2d: CoOp at depth k: Base and New against k, with both models' zero-shot accuracy as reference lines.
- Fig. 4: ContCoOp context length: Base / New / H per ``n_ctx`` (grouped bars).
- Paper vs measured: for results of the paper's own models on its datasets, measured against published
  Base and New, one point per (method, dataset), with the diagonal (the table is in the fidelity scorecard).
Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through pyplot, so no global backend
or window is involved. Colours come from seaborn's colour-blind-safe palette.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from upgradebench.atomic import write_atomic
from upgradebench.metrics import LedgerKey
from upgradebench.roles import REFERENCE_METHOD, ZERO_SHOT

from .depth import DEPTH_KEY, depth_summary
from .drift import FEATURES, PARAMETERS
from .fidelity import paper_table_for, per_dataset_comparison
from .outputs import MissingInput, Outputs
from .selection import (
    main_summary,
    main_summary_with_intervals,
    ordered_labels,
    ordered_pairs,
    slug,
    sweep_summary,
    zeroshot_accuracy,
)
from .tables import METRICS

PALETTE = sns.color_palette("colorblind")
METRIC_COLOURS = dict(zip([name for _, name in METRICS], PALETTE))
ACCURACY = "Top-1 accuracy (%)"


@contextmanager
def plot_style() -> Iterator[None]:
    """The look of every figure: seaborn's white grid at notebook scale."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=1.0):
        yield


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` (no creation date, so reruns give the same file), each
    atomically: a kill mid-write leaves the previous figure, never part of one."""
    png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
    # the format is named: the temporary file's suffix is not the figure's
    write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    write_atomic(pdf, lambda tmp: fig.savefig(tmp, format="pdf", bbox_inches="tight", metadata={"CreationDate": None}))
    return [png, pdf]


def _metric_bars(ax, frame: pd.DataFrame, x: str, order: list[str]) -> None:
    """Grouped Base / New / H bars of ``frame`` (columns base, new, H) over ``x``, values written on the bars."""
    long = frame.melt(id_vars=[x], value_vars=[m for m, _ in METRICS], var_name="metric", value_name="acc")
    long["metric"] = long.metric.map(dict(METRICS))
    sns.barplot(data=long, x=x, y="acc", hue="metric", order=order, hue_order=list(METRIC_COLOURS),
                palette=METRIC_COLOURS, ax=ax)
    bars = list(ax.containers)
    for container in bars:
        ax.bar_label(container, fmt="%.1f", fontsize=7, padding=1)
    indexed = frame.set_index(x)
    for container, (metric, _) in zip(bars, METRICS):  # 95% intervals where the frame has them
        if f"{metric}_lo" not in indexed:
            continue
        for bar, key in zip(container, order):
            if key in indexed.index and pd.notna(indexed.loc[key, f"{metric}_lo"]):
                mean, lo, hi = (float(indexed.loc[key, c]) for c in (metric, f"{metric}_lo", f"{metric}_hi"))
                ax.errorbar(bar.get_x() + bar.get_width() / 2, mean, yerr=[[mean - lo], [hi - mean]], fmt="none",
                            ecolor="0.2", elinewidth=0.8, capsize=2)
    ax.set_ylim(0, max(100.0, float(long.acc.max()) * 1.1))
    ax.set_ylabel(ACCURACY)


# ---- Fig. 2a -------------------------------------------------------------------------------------------------------
def fig2a(df: pd.DataFrame, out: Path, ledgers: dict[LedgerKey, pd.DataFrame] | None = None) -> list[Path]:
    """Fig. 2a for every (source, target, shots); with prediction ledgers, 95% intervals as error bars."""
    summary = main_summary_with_intervals(df, ledgers) if ledgers else main_summary(df)
    pairs = ordered_pairs(summary)
    if not pairs:
        raise MissingInput("no paired Base/New rows of reference configurations")
    written = []
    for source, target in pairs:
        part = summary[(summary.source == source) & (summary.target == target) & (summary.dataset == "Average")]
        for shots, avg in part.groupby("shots"):
            labels = ordered_labels(avg.label)
            n_datasets = int(avg.datasets.max())
            with plot_style():
                fig = Figure(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.2))
                ax = fig.subplots()
                _metric_bars(ax, avg, "label", labels)
                zs = avg[avg.label == ZERO_SHOT]
                if len(zs):
                    ax.axhline(float(zs.new.iloc[0]), color="0.3", linestyle="--", linewidth=1.2,
                               label=f"zero-shot on {target}")
                ax.set_xlabel("method")
                ax.set_title(f"{source} → {target}: average over {n_datasets} dataset{'s' * (n_datasets != 1)}, "
                             f"{shots} shots")
                ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
                ax.tick_params(axis="x", labelrotation=20)
                written += save(fig, out, f"fig2a-{slug(source, target)}-{shots}shot")
    return written


# ---- Fig. 2b / 2c --------------------------------------------------------------------------------------------------
def layer_label(layer: str) -> str:
    """Short tick label of a text-tower layer (blocks keep their index k, as in the depth study)."""
    short = {"token_embedding": "token emb.", "positional_embedding": "pos. emb.", "ln_final": "final LN",
             "text_projection": "projection"}
    return short.get(layer, layer.replace("block_", "block "))


def fig_drift(drift: pd.DataFrame | None, kind: str, name: str, out: Path) -> list[Path]:
    """Fig. 2b (``kind='parameters'``) or 2c (``'features'``): one figure per source, a bar colour per target."""
    if drift is None:
        raise MissingInput("no drift file (pass --drift FILE written by `upgradebench analyze drift`)")
    rows = drift[drift.kind == kind]
    if rows.empty:
        raise MissingInput(f"the drift file has no {kind} rows")
    what = "parameters" if kind == PARAMETERS else "output features on the prompt set"
    written = []
    for source, part in rows.groupby("source"):
        part = part.sort_values("layer_index").assign(tick=lambda f: f.layer.map(layer_label))
        order = list(dict.fromkeys(part.tick))
        targets = sorted(part.target.unique())
        with plot_style():
            fig = Figure(figsize=(max(7.0, 0.5 * len(order) + 2), 6.4))
            axes = fig.subplots(2, 1, sharex=True)
            for ax, column, title in ((axes[0], "mean_abs_change", "mean |Δ|"),
                                      (axes[1], "relative_change", "‖Δ‖ / ‖source‖")):
                sns.barplot(data=part, x="tick", y=column, hue="target", order=order, hue_order=targets,
                            palette=PALETTE[:len(targets)], ax=ax)
                ax.set_ylabel(title)
                ax.get_legend().remove()
            axes[1].set_xlabel("text-encoder layer")
            axes[1].tick_params(axis="x", labelrotation=45)
            axes[0].legend(*axes[0].get_legend_handles_labels(), title="target", frameon=False,
                           loc="upper left", bbox_to_anchor=(1.0, 1.0))
            axes[0].set_title(f"Change of the text encoder's {what}\n{source} → {', '.join(targets)}")
            fig.tight_layout()
            written += save(fig, out, f"{name}-{slug(source)}")
    return written


# ---- Fig. 2d -------------------------------------------------------------------------------------------------------
def fig2d(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 2d for every (source, target, dataset, shots) with CoOp runs at several depths."""
    summary = depth_summary(df)
    if summary.empty:
        raise MissingInput("no coop runs at several depths (run `upgradebench analyze depth`)")
    written = []
    for (source, target, dataset, shots), part in summary.groupby(["source", "target", "dataset", "shots"]):
        if part[DEPTH_KEY].nunique() < 2:
            continue  # a pair evaluated at the default depth only (another grid's target): no curve to draw
        part = part.sort_values(DEPTH_KEY)
        with plot_style():
            fig = Figure(figsize=(6.4, 4.2))
            ax = fig.subplots()
            for model, column, role, colour, marker in ((source, "base", "Base", PALETTE[0], "o"),
                                                        (target, "new", "New", PALETTE[1], "s")):
                ax.errorbar(part[DEPTH_KEY], part[column], yerr=part[f"{column}_std"].fillna(0), color=colour,
                            marker=marker, capsize=3, label=f"CoOp on {model} ({role})")
                zs = zeroshot_accuracy(df, dataset, model)
                if zs is not None:
                    ax.axhline(zs, color=colour, linestyle="--" if column == "new" else ":", linewidth=1.2,
                               label=f"zero-shot {model}")
            ax.set_xticks(sorted(part[DEPTH_KEY].unique()))
            ax.set_xlabel("depth k (context enters text block k)")
            ax.set_ylabel(ACCURACY)
            ax.set_title(f"CoOp by depth on {dataset}, {shots} shots: {source} → {target}")
            handles, labels = ax.get_legend_handles_labels()
            order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("zero-shot"))  # curves first
            ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
                      bbox_to_anchor=(1.0, 1.0), frameon=False)
            written += save(fig, out, f"fig2d-{slug(dataset)}-{slug(source, target)}-{shots}shot")
    return written


# ---- Fig. 4 --------------------------------------------------------------------------------------------------------
def fig4(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 4 for every (source, target, dataset, shots) with ContCoOp runs at several context lengths."""
    summary = sweep_summary(df, REFERENCE_METHOD, ("n_ctx",))
    if summary.empty:
        raise MissingInput(f"no {REFERENCE_METHOD} runs that vary n_ctx")
    written = []
    for (source, target, dataset, shots), part in summary.groupby(["source", "target", "dataset", "shots"]):
        if part.n_ctx.nunique() < 2:
            continue  # the reference context length only (another grid's target): no sweep to draw
        part = part.sort_values("n_ctx").assign(length=lambda f: f.n_ctx.astype(str))
        with plot_style():
            fig = Figure(figsize=(6.4, 4.2))
            ax = fig.subplots()
            _metric_bars(ax, part, "length", list(part.length))
            ax.set_xlabel("context length (n_ctx)")
            ax.set_title(f"ContCoOp context length on {dataset}, {shots} shots: {source} → {target}")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
            written += save(fig, out, f"fig4-{slug(dataset)}-{slug(source, target)}-{shots}shot")
    return written


def write_figures(df: pd.DataFrame, drift: pd.DataFrame | None, out: str | Path,
                  ledgers: dict[LedgerKey, pd.DataFrame] | None = None) -> Outputs:
    """Write every figure the inputs allow into ``out``; the others are reported as skipped."""
    out = Path(out)
    outputs = Outputs()
    outputs.attempt("fig2a", lambda: fig2a(df, out, ledgers))
    outputs.attempt("fig2b", lambda: fig_drift(drift, PARAMETERS, "fig2b", out))
    outputs.attempt("fig2c", lambda: fig_drift(drift, FEATURES, "fig2c", out))
    outputs.attempt("fig2d", lambda: fig2d(df, out))
    outputs.attempt("fig4", lambda: fig4(df, out))
    outputs.attempt("paper-vs-measured", lambda: fig_paper_vs_measured(df, out))
    return outputs


# ---- paper vs measured ---------------------------------------------------------------------------------------------
def fig_paper_vs_measured(df: pd.DataFrame, out: Path) -> list[Path]:
    """Measured against published Base and New per (method, dataset), for the paper's own model pairs."""
    written = []
    rows = df[df.shots == 16]
    for source, target in ordered_pairs(main_summary(rows)):
        table = paper_table_for(source, target)
        points = pd.DataFrame(per_dataset_comparison(rows, source, target, table) if table else [])
        if points.empty:
            continue
        assert table is not None  # no paper table, no points
        points = points[points.dataset != "Average"]
        methods = ordered_labels(points.method)
        with plot_style():
            fig = Figure(figsize=(11.0, 5.0))
            for ax, metric, model in zip(fig.subplots(1, 2), ("base", "new"), (source, target)):
                sns.scatterplot(data=points, x=f"paper_{metric}", y=f"measured_{metric}", hue="method",
                                hue_order=methods, style="method", style_order=methods, s=60, ax=ax,
                                palette=PALETTE[:len(methods)] if len(methods) <= len(PALETTE) else None)
                ax.plot([0, 100], [0, 100], color="0.5", linestyle="--", linewidth=1)
                ax.set(xlim=(0, 100), ylim=(0, 100), xlabel=f"published {metric.title()} (%)",
                       ylabel=f"measured {metric.title()} (%)", title=f"{metric.title()} on {model}")
                ax.get_legend().remove()
            handles, labels = ax.get_legend_handles_labels()
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
            fig.suptitle(f"Paper ({table.replace('table', 'Table ')}) vs measured: {source} → {target}, 16 shots, "
                         f"{points.dataset.nunique()} datasets")
            fig.tight_layout()
            written += save(fig, out, f"paper-vs-measured-{slug(source, target)}")
    if not written:
        raise MissingInput("no 16-shot results of the paper's models (clip → eva-clip, clip-l → eva-clip-l) "
                           "on its datasets")
    return written
