"""``upgradebench results show`` (the paper's Table 2 layout, with intervals) and ``results compare``."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..errors import UserError
from ..paths import default_results_dir
from ._common import build_table, console, fits_console, print_json, print_text, show_table
from ._options import Json

app = typer.Typer(help="Read result folders.", no_args_is_help=True)

MISSING = "-"  # a metric that needs a ledger the rows do not have (schema 1): missing, not 0


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def cell(mean: float, lo: float = math.nan, hi: float = math.nan, std: float = math.nan) -> str:
    """``mean`` over ``[lo, hi]`` with an interval, ``mean ± std`` with a standard deviation only, ``-`` when missing
    (a NaN is never shown as a number)."""
    if _nan(mean):
        return MISSING
    if not _nan(lo) and not _nan(hi):
        return f"{mean:.2f}\n[{lo:.2f}, {hi:.2f}]"  # two lines; the tables are packed so the interval stays whole
    return f"{mean:.2f}" if _nan(std) else f"{mean:.2f} ± {std:.2f}"


def print_packed(title: str, columns: list[str], rows: list[list[str]], lead: int,
                 groups: list[tuple[str, list[int]]]) -> None:
    """Print a table whose cells are never wrapped: whole where it fits the terminal, else one table per group
    of columns (a title suffix and column indices each, the first ``lead`` columns repeated in every table),
    a group that is still too wide cut where it stops fitting (its title then says "cont.")."""
    def table(suffix: str, picked: list[int]):
        keep = list(range(lead)) + picked
        return build_table(title + suffix, [columns[i] for i in keep], [[r[i] for i in keep] for r in rows])

    whole = table("", [i for _, picked in groups for i in picked])
    if fits_console(whole):
        show_table(whole)
        return
    for suffix, picked in groups:
        part: list[int] = []
        parts = 0
        for i in picked:
            if part and not fits_console(table(suffix, part + [i])):
                show_table(table(suffix + (" (cont.)" if parts else ""), part))
                part, parts = [], parts + 1
            part.append(i)
        show_table(table(suffix + (" (cont.)" if parts else ""), part))


def ood_datasets(rows) -> dict[str, str]:
    """OOD test set -> the dataset its modules were trained on (rows of ``--ood``, kept out of every Average)."""
    ood = rows[rows.dataset != rows.train_dataset]
    return dict(zip(ood.dataset, ood.train_dataset))


def average_notes(pair, ood: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What makes a method's ``Average`` differ from the others' in one (source, target, shots) summary: fewer
    datasets than the methods with the most (mark ``*``), or datasets without prediction ledgers, whose
    intervals and ledger metrics are then not shown (mark ``†``). Returns the marks per method label and one
    note per kind of difference, naming its labels."""
    measured = pair[(pair.dataset != "Average") & ~pair.dataset.isin(list(ood))]
    covered = {label: frozenset(group.dataset) for label, group in measured.groupby("label")}
    everything = frozenset().union(*covered.values())
    marks: dict[str, str] = {}
    notes: dict[str, list[str]] = {}  # note -> labels
    for r in pair[pair.dataset == "Average"].itertuples():
        mine = covered.get(r.label, frozenset())
        if mine != everything:
            marks[r.label] = marks.get(r.label, "") + "*"
            notes.setdefault(f"* Average over {len(mine)} of {len(everything)} datasets ({', '.join(sorted(mine))}), "
                             "not comparable with the other Averages:", []).append(r.label)
        have = getattr(r, "ledger_datasets", math.nan)
        if not _nan(have) and have < r.datasets:
            marks[r.label] = marks.get(r.label, "") + "†"
            notes.setdefault(f"† {int(r.datasets - have)} of {int(r.datasets)} datasets without prediction ledgers "
                             "(intervals and ledger metrics of the Average not shown):", []).append(r.label)
    return marks, [f"{note} {', '.join(labels)}" for note, labels in notes.items()]


def marked(label: str, marks: dict[str, str]) -> str:
    """``label`` with its marks (``*``, ``†``) from :func:`average_notes`."""
    return f"{label} {marks[label]}" if label in marks else label


LAYOUTS = ("auto", "wide", "long")

ROWS = (("base", "Base"), ("new", "New"), ("H", "H"), ("nfr", "NFR"), ("btc", "BTC"), ("reuse_gain", "Reuse gain"),
        ("recovery", "Recovery"))
ACCURACY = 3  # ROWS[:3] are accuracies, the rest compatibility


@app.command("show")
def show(
    folders: list[Path] = typer.Argument(None, help="Results folder(s) (default: $UPGRADEBENCH_HOME/results)."),
    target: str = typer.Option(None, "--target", help="Only this target model."),
    method: list[str] = typer.Option(None, "--method", "-m",
                                     help="Only these methods (zero-shot stays as the reference)."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only these datasets."),
    reference: bool = typer.Option(False, "--reference",
                                   help="Only reference configurations (no variants), as Table 2."),
    layout: str = typer.Option("auto", "--layout",
                               help="wide: a column per method, as the paper's Table 2; long: a table per dataset, a "
                                    "row per method; auto: wide where it fits the terminal, else long."),
    as_json: bool = Json,
) -> None:
    """Per dataset and on average: Base / New / H and the compatibility metrics of each method (docs/metrics.md).

    A cell is the mean over seeds, over its 95% interval (paired bootstrap over test items and seeds) where the
    runs have prediction ledgers, ``mean ± std`` over seeds where they do not, and ``-`` for a metric that needs
    one. An Average covers the in-distribution datasets; one over fewer datasets than the others is marked.
    """
    from upgradebench.analysis.selection import ordered_labels

    from ..metrics import read_ledgers, summarize_with_intervals
    from ..results import read_results
    from ..roles import ZERO_SHOT

    if layout not in LAYOUTS:
        raise UserError(f"Unknown layout {layout!r}.", f"use one of {', '.join(LAYOUTS)}")

    folders = list(folders) if folders else [default_results_dir()]
    rows = read_results(*folders)
    if reference:
        rows = rows[rows.method_variant == ""]
    if method:
        rows = rows[rows.method.isin(method) | (rows.method == ZERO_SHOT)]
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
    ood = ood_datasets(rows)
    legend = (f"[95% CI: paired bootstrap over items and seeds], or ± std over seeds without ledgers; "
              f"'{MISSING}' = needs a ledger")
    for (source, tgt, shots), pair in summary.groupby(["source", "target", "shots"]):
        seeds = sorted({int(s) for s in pair.seeds.dropna()})
        head = f"{source} -> {tgt}, {shots} shots"
        over = (f"mean over {seeds[0]} seed{'s' * (seeds[0] > 1)}" if len(seeds) == 1
                else f"mean over {seeds[0]}-{seeds[-1]} seeds (each in --layout long)")
        labels = ordered_labels(pair.label)
        measured = sorted(set(pair.dataset) - {"Average"} - set(ood))
        datasets = measured + sorted(set(pair.dataset) & set(ood)) + ["Average"]
        names = {d: f"{d} (OOD of {ood[d]})" if d in ood else d for d in datasets}
        names["Average"] = f"Average of {len(measured)}"
        marks, notes = average_notes(pair, ood)
        cells, seeds_of = {}, {}  # (dataset, label) -> one cell per metric of ROWS; seeds
        for r in pair.itertuples():
            per_seed = r.dataset != "Average"
            seeds_of[(r.dataset, r.label)] = "" if _nan(r.seeds) else str(int(r.seeds))
            cells[(r.dataset, r.label)] = [
                cell(float(getattr(r, metric)), getattr(r, f"{metric}_lo", math.nan),
                     getattr(r, f"{metric}_hi", math.nan),
                     getattr(r, f"{metric}_std", math.nan) if per_seed else math.nan)
                for metric, _ in ROWS]
        footer = [f"Average of {len(measured)}: mean over {', '.join(measured)}"
                  + (" (OOD test sets are not in it)" if set(pair.dataset) & set(ood) else "")] + notes
        wide = build_table(f"{head}: {over} {legend}", ["dataset", ""] + [marked(label, marks) for label in labels],
                           [[names[d] if i == 0 else "", name] + [cells[(d, label)][i] if (d, label) in cells else ""
                                                                  for label in labels]
                            for d in datasets for i, (_, name) in enumerate(ROWS)])
        if layout == "wide" or (layout == "auto" and fits_console(wide)):
            show_table(wide)
        else:
            console.print(f"{head}: {over} {legend}", markup=False, highlight=False)
            with_seeds = len(seeds) > 1
            columns = ["method"] + (["seeds"] if with_seeds else []) + [name for _, name in ROWS]
            lead = 1 + with_seeds
            groups = [("", list(range(lead, lead + ACCURACY))),
                      (", compatibility", list(range(lead + ACCURACY, lead + len(ROWS))))]
            for d in datasets:  # a narrow terminal: a table per dataset, split where it would not fit
                print_packed(f"{head}, {names[d]}", columns,
                             [[marked(label, marks) if d == "Average" else label] +
                              ([seeds_of[(d, label)]] if with_seeds else []) + cells[(d, label)]
                              for label in labels if (d, label) in cells], lead, groups)
        for line in footer:  # wrapped at spaces to the terminal, never read as markup
            console.print(line, markup=False, highlight=False)


@app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Method label A (e.g. contcoop, or coop[n_ctx=4])."),
    b: str = typer.Argument(..., help="Method label B."),
    results: list[Path] = typer.Option(None, "--results", "-r",
                                       help="Results folder(s) (default: $UPGRADEBENCH_HOME/results)."),
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
    ood = ood_datasets(rows)
    for (source, tgt, shots), group in out.groupby(["source", "target", "shots"], sort=False):
        tasks = [d for d in group.dataset if d != "Average" and d not in ood]
        names = {d: f"{d} (OOD)" if d in ood else d for d in group.dataset}
        names["Average"] = f"Average of {len(tasks)}"
        table = [[names[r.dataset], str(r.seeds)] +
                 [cell(getattr(r, f"d_{m}"), getattr(r, f"d_{m}_lo"), getattr(r, f"d_{m}_hi"))
                  for m in ("base", "new", "H", "nfr")] +
                 [f"{r.a_only_right} / {r.b_only_right}", f"{r.mcnemar_p:.3g}"] for r in group.itertuples()]
        print_packed(f"{a} - {b}, {source} -> {tgt}, {shots} shots: difference [95% CI]",
                     ["dataset", "seeds", "Δ Base", "Δ New", "Δ H", "Δ NFR", "only A / only B right (New)",
                      "McNemar p"], table, 1, [("", [1, 2, 3, 4, 5]), (", flips", [6, 7])])
        console.print(f"Average of {len(tasks)}: mean over {', '.join(tasks)}"
                      + ("; OOD test sets are compared one by one, not in the Average" if set(group.dataset) & set(ood)
                         else ""), markup=False, highlight=False)
