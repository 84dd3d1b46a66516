"""``upgradebench results show`` (the paper's Table 2 layout, with intervals) and ``results compare``."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..paths import default_results_dir
from ..errors import UserError
from ._common import build_table, console, fits_console, print_json, print_table, print_text, show_table
from ._options import Json

app = typer.Typer(help="Read result folders.", no_args_is_help=True)

MISSING = "-"  # a metric that needs a ledger the rows do not have (schema 1): missing, not 0


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def cell(mean: float, lo: float = math.nan, hi: float = math.nan, std: float = math.nan) -> str:
    """``mean`` over ``[lo, hi]`` with an interval, ``mean ± std`` with a standard deviation only, ``-`` when missing."""
    if _nan(mean):
        return MISSING
    if not _nan(lo):
        return f"{mean:.2f}\n[{lo:.2f}, {hi:.2f}]"  # two lines: a narrow column wraps at the space, not in a number
    return f"{mean:.2f}" if _nan(std) else f"{mean:.2f} ± {std:.2f}"


LAYOUTS = ("auto", "wide", "long")

ROWS = (("base", "Base"), ("new", "New"), ("H", "H"), ("nfr", "NFR"), ("btc", "BTC"), ("reuse_gain", "Reuse gain"),
        ("recovery", "Recovery"))


@app.command("show")
def show(
    folders: list[Path] = typer.Argument(None, help="Results folder(s) (default: $UPGRADEBENCH_HOME/results)."),
    target: str = typer.Option(None, "--target", help="Only this target model."),
    method: list[str] = typer.Option(None, "--method", "-m", help="Only these methods (zero-shot stays as the reference)."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only these datasets."),
    reference: bool = typer.Option(False, "--reference", help="Only reference configurations (no variants), as Table 2."),
    layout: str = typer.Option("auto", "--layout",
                               help="wide: a column per method, as the paper's Table 2; long: a table per dataset, a "
                                    "row per method; auto: wide where it fits the terminal, else long."),
    as_json: bool = Json,
) -> None:
    """Per dataset and on average: Base / New / H and the compatibility metrics of each method (docs/metrics.md).

    A cell reads the mean over its 95% interval (paired bootstrap over test items and seeds) where the runs
    have prediction ledgers, ``mean ± std`` over seeds where they do not, and ``-`` for a metric that needs one.
    """
    from upgradebench.analysis.selection import ordered_labels

    from ..metrics import read_ledgers, summarize_with_intervals
    from ..results import read_results

    if layout not in LAYOUTS:
        raise UserError(f"Unknown layout {layout!r}.", f"use one of {', '.join(LAYOUTS)}")

    folders = list(folders) if folders else [default_results_dir()]
    rows = read_results(*folders)
    if reference:
        rows = rows[rows.method_variant == ""]
    if method:
        rows = rows[rows.method.isin(method) | (rows.method == "zeroshot")]
    if dataset:
        rows = rows[rows.dataset.isin(dataset)]
    summary = summarize_with_intervals(rows, read_ledgers(*folders))
    if target:
        summary = summary[summary.target == target]
    if as_json:
        print_json(summary.astype(object).where(summary.notna(), None).to_dict(orient="records"))
        return
    if summary.empty:
        filtered = " that pass the filters" if (reference or method or dataset or target) else ""
        print_text(f"no paired results{filtered} in {', '.join(map(str, folders))} (a run needs a base and a new "
                   f"row)", err=True)
        return
    legend = (f"mean [95% CI: paired bootstrap over items and seeds], or mean ± std over seeds without ledgers; "
              f"'{MISSING}' = needs a ledger")
    for (source, tgt, shots), pair in summary.groupby(["source", "target", "shots"]):
        head = f"{source} -> {tgt}, {shots} shots"
        labels = ordered_labels(pair.label)
        datasets = [d for d in sorted(pair.dataset.unique()) if d != "Average"] + ["Average"]
        cells = {}  # (dataset, label) -> one cell per metric of ROWS
        for r in pair.itertuples():
            per_seed = r.dataset != "Average"
            cells[(r.dataset, r.label)] = [
                cell(float(getattr(r, metric)), getattr(r, f"{metric}_lo", math.nan),
                     getattr(r, f"{metric}_hi", math.nan), getattr(r, f"{metric}_std", math.nan) if per_seed else math.nan)
                for metric, _ in ROWS]
        wide = build_table(f"{head}: {legend}", ["dataset", ""] + labels,
                           [[d if i == 0 else "", name] + [cells[(d, label)][i] if (d, label) in cells else ""
                                                           for label in labels]
                            for d in datasets for i, (_, name) in enumerate(ROWS)])
        if layout == "wide" or (layout == "auto" and fits_console(wide)):
            show_table(wide)
            continue
        console.print(f"{head}: {legend}", markup=False, highlight=False)
        for d in datasets:  # a narrow terminal: accuracies, then compatibility
            print_table(f"{head}, {d}", ["method"] + [name for _, name in ROWS],
                        [[label] + cells[(d, label)] for label in labels if (d, label) in cells],
                        parts=(("", slice(0, 3)), (", compatibility", slice(3, None))))


@app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Method label A (e.g. contcoop, or coop[n_ctx=4])."),
    b: str = typer.Argument(..., help="Method label B."),
    results: list[Path] = typer.Option(None, "--results", "-r", help="Results folder(s) (default: $UPGRADEBENCH_HOME/results)."),
    target: str = typer.Option(None, "--target", help="Only this target model."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only these datasets."),
    as_json: bool = Json,
) -> None:
    """A - B on the runs both have: Base, New, H and NFR differences with paired 95% intervals, and McNemar's
    test on their pooled paired predictions on the target."""
    from ..metrics import compare as compare_methods
    from ..metrics import read_ledgers
    from ..results import read_results

    folders = list(results) if results else [default_results_dir()]
    rows = read_results(*folders)
    if dataset:
        rows = rows[rows.dataset.isin(dataset)]
    out = compare_methods(rows, read_ledgers(*folders), a, b)
    if target and not out.empty:
        out = out[out.target == target]
    if as_json:
        print_json(out.to_dict(orient="records"))
        return
    if out.empty:
        print_text(f"{a} and {b} share no runs (same source, target, dataset, shots and seed)", err=True)
        return
    for (source, tgt, shots), group in out.groupby(["source", "target", "shots"], sort=False):
        table = [[r.dataset, r.seeds] + [cell(getattr(r, f"d_{m}"), getattr(r, f"d_{m}_lo"), getattr(r, f"d_{m}_hi"))
                                         for m in ("base", "new", "H", "nfr")] +
                 [f"{r.a_only_right} / {r.b_only_right}", f"{r.mcnemar_p:.3g}"] for r in group.itertuples()]
        print_table(f"{a} - {b}, {source} -> {tgt}, {shots} shots: difference [95% CI]",
                    ["dataset", "seeds", "Δ Base", "Δ New", "Δ H", "Δ NFR", "only A / only B right (New)",
                     "McNemar p"], table, parts=(("", slice(0, 4)), (", flips", slice(4, None))))
