"""The fidelity scorecard: does a results folder reproduce the paper's findings, finding by finding?

The paper's published numbers ship as data (``paper.json`` beside this module: Tables 2-8, Fig. 4 and the
trends of Fig. 2b-d). A *finding* is one claim of the paper written as a measured quantity and the direction
the paper reports (e.g. "CoOp's New accuracy minus the target's zero-shot accuracy is positive": +4.61 in
Table 2). :func:`scorecard` measures every finding on result rows of one source -> target pair and says
whether it holds (same sign as the paper), adds the Kendall tau between the paper's method ranking and the
measured one on New and on H, and, where the pair and datasets are the paper's own (``clip -> eva-clip`` is
Table 2, ``clip-l -> eva-clip-l`` Table 8), the published and measured Base / New / H of every dataset.

A finding whose rows are missing is reported as not measured (``held`` is None), never as failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, cast

import pandas as pd

from upgradebench.atomic import write_json, write_text
from upgradebench.errors import UserError
from upgradebench.results import harmonic
from upgradebench.roles import REFERENCE_METHOD, ZERO_SHOT

from .depth import depth_summary
from .outputs import MissingInput, Outputs
from .selection import main_summary, ordered_pairs, slug, sweep_summary


@lru_cache(maxsize=1)
def paper_numbers() -> dict[str, Any]:
    """The paper's published numbers (``upgradebench/analysis/paper.json``)."""
    return json.loads(resources.files(__package__).joinpath("paper.json").read_text(encoding="utf-8"))


def paper_table_for(source: str, target: str) -> str | None:
    """``"table2"`` / ``"table8"`` when (source, target) is the paper's own pair of models, else None."""
    numbers = paper_numbers()
    for name in ("table2", "table8"):
        if (numbers[name]["source"], numbers[name]["target"]) == (source, target):
            return name
    return None


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two equally long sequences (ties in either count as neither concordant nor
    discordant); None when fewer than two pairs can be ranked."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else None


@dataclass
class Finding:
    """One claim of the paper, as a number: ``paper`` (published), ``measured`` and whether it holds.

    ``reference`` names the paper's table or figure. ``expect`` is the direction the paper reports: ``">0"`` /
    ``"<0"`` for a difference or a trend (Kendall tau), ``"rank 1"`` for a best-of comparison (the measured value
    is then the rank). ``held`` is None when
    the rows needed to measure it are missing.
    """

    id: str
    group: str
    reference: str
    claim: str
    expect: str
    paper: float | None
    measured: float | None
    held: bool | None = field(init=False)

    def __post_init__(self) -> None:
        if self.measured is None or (isinstance(self.measured, float) and math.isnan(self.measured)):
            self.measured, self.held = None, None
        elif self.expect == ">0":
            self.held = self.measured > 0
        elif self.expect == "<0":
            self.held = self.measured < 0
        elif self.expect == "rank 1":
            self.held = self.measured == 1
        else:
            raise ValueError(f"unknown expectation {self.expect!r}")


@dataclass
class Scorecard:
    """Every finding for one source -> target pair, the ranking agreement and (for the paper's own models)
    the per-dataset comparison."""

    source: str
    target: str
    shots: int | None
    paper_table: str
    findings: list[Finding]
    ranking: dict[str, float | None]
    per_dataset: list[dict[str, Any]]

    @property
    def counts(self) -> dict[str, int]:
        """How many findings held, did not hold, or could not be measured."""
        held = [f.held for f in self.findings]
        return {"held": held.count(True), "not_held": held.count(False), "not_measured": held.count(None)}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN never appears: missing values are None)."""
        return {"source": self.source, "target": self.target, "shots": self.shots, "paper_table": self.paper_table,
                "counts": self.counts, "ranking_kendall_tau": self.ranking,
                "findings": [asdict(f) for f in self.findings], "per_dataset": self.per_dataset}


# ---- measuring -------------------------------------------------------------------------------------------------
def _average(summary: pd.DataFrame) -> dict[str, dict[str, float]]:
    """method -> {base, new, H} of the ``Average`` rows of a reference-configuration summary."""
    avg = summary[(summary.dataset == "Average") & (summary.label == summary.method)]
    return {m: {"base": b, "new": n, "H": h} for m, b, n, h in zip(avg.method, avg.base, avg.new, avg.H)}


def _get(table: dict[str, dict[str, float]], method: str, metric: str) -> float | None:
    return table.get(method, {}).get(metric)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _new_over_zeroshot(method: str, table: dict[str, dict[str, float]]) -> float | None:
    """``method``'s New minus zero-shot's New (None when either is missing)."""
    return _diff(_get(table, method, "new"), _get(table, ZERO_SHOT, "new"))


def _rank(table: dict[str, dict[str, float]], method: str, metric: str, methods: Sequence[str]) -> float | None:
    """1-based rank of ``method`` by ``metric`` among ``methods`` (all must be measured)."""
    if any(m not in table for m in methods):
        return None
    value = table[method][metric]
    return float(1 + sum(table[m][metric] > value for m in methods if m != method))


def _main_findings(paper: dict[str, dict[str, float]], measured: dict[str, dict[str, float]],
                   reference: str) -> list[Finding]:
    methods = paper_numbers()["methods"]
    shallow, deep = paper_numbers()["shallow_methods"][:3], paper_numbers()["deep_methods"]

    def both(fn: Callable[[dict[str, dict[str, float]]], float | None]) -> tuple[float | None, float | None]:
        return fn(paper), fn(measured)

    def group_mean(table: dict[str, dict[str, float]], group: Sequence[str], metric: str) -> float | None:
        values = [_get(table, m, metric) for m in group]
        return None if None in values else sum(cast(list[float], values)) / len(values)

    out = []

    def add(fid: str, claim: str, expect: str, fn: Callable[[dict[str, dict[str, float]]], float | None]) -> None:
        p, m = both(fn)
        out.append(Finding(fid, "main", reference, claim, expect, p, m))

    add("coop_adapts", "few-shot prompts adapt: CoOp Base - zero-shot Base", ">0",
        lambda t: _diff(_get(t, "coop", "base"), _get(t, ZERO_SHOT, "base")))
    add("linear_probe_adapts", "linear probe Base - zero-shot Base", ">0",
        lambda t: _diff(_get(t, "linear-probe", "base"), _get(t, ZERO_SHOT, "base")))
    add("upgrade_helps_zeroshot", "the upgrade helps zero-shot: zero-shot New - zero-shot Base", ">0",
        lambda t: _diff(_get(t, ZERO_SHOT, "new"), _get(t, ZERO_SHOT, "base")))
    for method, what in (("linear-probe", "the linear probe collapses on the target"),
                         ("clip-adapter", "CLIP-Adapter falls below the target's zero-shot"),
                         ("tip-adapter-f", "Tip-Adapter-F falls below the target's zero-shot")):
        add(f"{method}_below_target_zeroshot", f"{what}: {method} New - zero-shot New", "<0",
            partial(_new_over_zeroshot, method))
    for method in ("coop", "cocoop", "kgcoop", REFERENCE_METHOD):
        add(f"{method}_beats_target_zeroshot", f"{method} New - zero-shot New (the module still helps)", ">0",
            partial(_new_over_zeroshot, method))
    add("shallow_beats_deep_new", "shallow-layer methods transfer better: mean New of CoOp/CoCoOp/KgCoOp - "
        "mean New of LP/CLIP-Adapter/Tip-Adapter-F", ">0",
        lambda t: _diff(group_mean(t, shallow, "new"), group_mean(t, deep, "new")))
    add("contcoop_beats_coop_new", "ContCoOp New - CoOp New", ">0",
        lambda t: _diff(_get(t, REFERENCE_METHOD, "new"), _get(t, "coop", "new")))
    for metric in ("new", "H"):
        add(f"contcoop_best_{metric.lower()}",
            f"ContCoOp ranks first on {'New' if metric == 'new' else metric} among the paper's 8 methods",
            "rank 1", partial(_rank, method=REFERENCE_METHOD, metric=metric, methods=methods))
    return out


def _ranking(paper: dict[str, dict[str, float]], measured: dict[str, dict[str, float]]) -> dict[str, float | None]:
    methods = [m for m in paper_numbers()["methods"] if m in measured]
    out: dict[str, float | None] = {"methods": float(len(methods))}
    for metric in ("new", "H"):
        out[metric] = kendall_tau([paper[m][metric] for m in methods], [measured[m][metric] for m in methods])
    return out


def _sweep_rows(df: pd.DataFrame, source: str, target: str, knobs: Sequence[str]) -> pd.DataFrame:
    """Base/New/H per knob value of ContCoOp on this pair, averaged over the datasets it was swept on."""
    swept = sweep_summary(df, REFERENCE_METHOD, knobs)
    if swept.empty:
        return swept
    swept = swept[(swept.source == source) & (swept.target == target)]
    if swept.empty:
        return swept
    key = [json.dumps(list(values)) for values in zip(*(swept[k] for k in knobs))]
    out = swept.assign(_key=key).groupby("_key").agg(base=("base", "mean"), new=("new", "mean")).reset_index()
    out["H"] = [harmonic(b, n) for b, n in zip(out.base, out.new)]
    out["values"] = out._key.map(json.loads)
    return out


def _lookup(rows: pd.DataFrame | list[dict[str, Any]], knobs: Sequence[str], values: Sequence[Any],
            metric: str) -> float | None:
    """``metric`` of the row whose knob values equal ``values`` (paper rows or a measured sweep frame). A paper
    row's H is the published one; Fig. 4 prints no H for some rows, which then get H of their Base and New."""
    if isinstance(rows, pd.DataFrame):
        if rows.empty:
            return None
        hit = rows[rows["values"].map(lambda v: list(v) == list(values))]
        return float(hit[metric].iloc[0]) if len(hit) else None
    for row in rows:
        if [row[k] for k in knobs] == list(values):
            if metric == "H" and row.get("H") is None:
                return harmonic(row["base"], row["new"])
            return row[metric]
    return None


def _best(rows: pd.DataFrame | list[dict[str, Any]], knobs: Sequence[str], values: Sequence[Any],
          candidates: Sequence[Sequence[Any]]) -> float | None:
    """Rank (1 = best) of ``values`` by H among those ``candidates`` that were measured; None unless ``values``
    and at least one other candidate were."""
    looked_up = {json.dumps(list(c)): _lookup(rows, knobs, c, "H") for c in candidates}
    scores = {k: v for k, v in looked_up.items() if v is not None}
    mine = scores.get(json.dumps(list(values)))
    if mine is None or len(scores) < 2:
        return None
    return float(1 + sum(s > mine for s in scores.values()))


def _ablation_findings(df: pd.DataFrame, source: str, target: str) -> list[Finding]:
    tables = paper_numbers()["ablations"]
    out = []
    t4 = tables["table4"]
    knobs = t4["knobs"]
    measured4 = _sweep_rows(df, source, target, knobs)
    for fid, claim, a, b in (
            ("attention_helps_new", "the attention network helps New (no KD): Attn - neither", [True, False],
             [False, False]),
            ("kd_helps_new", "the distillation loss helps New (no Attn): KD - neither", [False, True], [False, False]),
            ("attention_beats_kd_new", "attention helps more than KD: Attn only - KD only", [True, False],
             [False, True])):
        out.append(Finding(fid, "ablation", "Table 4", claim, ">0",
                           _diff(_lookup(t4["rows"], knobs, a, "new"), _lookup(t4["rows"], knobs, b, "new")),
                           _diff(_lookup(measured4, knobs, a, "new"), _lookup(measured4, knobs, b, "new"))))
    grid4 = [[True, True], [True, False], [False, True], [False, False]]
    out.append(Finding("full_contcoop_best_h", "ablation", "Table 4", "Attn + KD has the best H of the four",
                       "rank 1", _best(t4["rows"], knobs, [True, True], grid4),
                       _best(measured4, knobs, [True, True], grid4)))
    for name, fid, claim, default in (
            ("table5", "kd_weight_1_best_h", "lambda = 1 (the default) has the best H", 1.0),
            ("table6", "one_head_best_h", "one attention head (the default) has the best H", 1),
            ("table7", "class_condition_best_h", "conditioning on the class name alone has the best H", "{}"),
            ("fig4", "n_ctx_16_best_h", "16 context tokens (the default) have the best H", 16)):
        table = tables[name]
        knobs = table["knobs"]
        candidates = [[row[k] for k in knobs] for row in table["rows"]]
        measured = _sweep_rows(df, source, target, knobs)
        out.append(Finding(fid, "ablation", table["title"].split(":")[0], claim, "rank 1",
                           _best(table["rows"], knobs, [default], candidates),
                           _best(measured, knobs, [default], candidates)))
    return out


def _depth_finding(df: pd.DataFrame, source: str, target: str) -> Finding:
    summary = depth_summary(df)
    measured = None
    if not summary.empty:
        part = summary[(summary.source == source) & (summary.target == target)]
        by_depth = part.groupby("depth").new.mean()
        if len(by_depth) >= 2:
            measured = kendall_tau([float(d) for d in by_depth.index], list(by_depth.values))
    return Finding("depth_curve_falls", "depth", "Fig. 2d",
                   "CoOp trained at deeper text blocks transfers worse: Kendall tau of (depth k, New)", "<0",
                   -1.0, measured)


def _drift_findings(drift: pd.DataFrame | None, source: str, target: str) -> list[Finding]:
    out = []
    for kind, fig in (("parameters", "Fig. 2b"), ("features", "Fig. 2c")):
        measured = None
        if drift is not None:
            part = drift[(drift.source == source) & (drift.target == target) & (drift.kind == kind)
                         & drift.layer.str.startswith("block_")].sort_values("layer_index")
            if len(part) >= 2:
                measured = kendall_tau([float(i) for i in part.layer_index], list(part.relative_change))
        out.append(Finding(f"{kind}_drift_grows", "drift", fig,
                           f"relative {kind} change of the text blocks grows with depth: Kendall tau of "
                           "(block, change)", ">0", 1.0, measured))
    return out


def _ood_findings(df: pd.DataFrame, source: str) -> list[Finding]:
    table = paper_numbers()["table3"]
    paper_avg = table["average_published"]
    rows = df[(df.dataset != df.train_dataset) & (df.role == "base") & (df.source == source)
              & (df.method_variant == "")]
    measured = rows.groupby(["method", "dataset"]).top1.mean().groupby("method").mean().to_dict()
    methods = list(table["methods"])
    rank = None
    if all(m in measured for m in methods):
        rank = float(1 + sum(measured[m] > measured[REFERENCE_METHOD] for m in methods if m != REFERENCE_METHOD))
    paper_rank = float(1 + sum(paper_avg[m] > paper_avg[REFERENCE_METHOD] for m in methods if m != REFERENCE_METHOD))
    out = [Finding("contcoop_best_ood", "ood", "Table 3",
                   "ContCoOp has the best average on the out-of-distribution test sets", "rank 1", paper_rank, rank)]
    for method in ("coop", "cocoop", "kgcoop", REFERENCE_METHOD):
        out.append(Finding(f"{method}_beats_zeroshot_ood", "ood", "Table 3",
                           f"{method} beats zero-shot on the OOD average (source model)", ">0",
                           paper_avg[method] - paper_avg[ZERO_SHOT],
                           _diff(measured.get(method), measured.get(ZERO_SHOT))))
    return out


def per_dataset_comparison(df: pd.DataFrame, source: str, target: str, table: str) -> list[dict[str, Any]]:
    """Published vs measured Base / New / H per (dataset, method) of a paper table, for the datasets and
    methods present in both; the ``Average`` row only for methods measured on all of the table's datasets."""
    published = paper_numbers()[table]["datasets"]
    summary = main_summary(df)
    summary = summary[(summary.source == source) & (summary.target == target) & (summary.label == summary.method)]
    measured_datasets = summary[summary.dataset != "Average"].groupby("method").dataset.nunique()
    complete = set(measured_datasets[measured_datasets == len(published) - 1].index)
    out = []
    for dataset, method, base, new, h in zip(summary.dataset, summary.method, summary.base, summary.new, summary.H):
        paper = published.get(dataset, {}).get(method)
        if paper is None or (dataset == "Average" and method not in complete):
            continue  # an average over fewer datasets than the paper's is not comparable with it
        out.append({"dataset": dataset, "method": method,
                    **{f"paper_{k}": paper[k] for k in ("base", "new", "H")},
                    "measured_base": float(base), "measured_new": float(new), "measured_H": float(h),
                    **{f"diff_{k}": float(v) - paper[k] for k, v in (("base", base), ("new", new), ("H", h))}})
    return out


def scorecard(df: pd.DataFrame, source: str, target: str, drift: pd.DataFrame | None = None,
              shots: int | None = None) -> Scorecard:
    """Measure every finding of the paper on result rows of ``source -> target`` (``shots``: default 16 when
    present, else the largest) and, where available, a drift table of the same pair."""
    pair = df[(df.source == source) & (df.eval_model == target)]
    if pair.empty:
        raise UserError(f"The results hold no rows of {source!r} -> {target!r}.",
                        "pass --source and --target as they appear in `upgradebench results show`")
    available = sorted(pair.shots.unique())
    if shots is None:
        shots = 16 if 16 in available else int(available[-1])
    elif shots not in available:
        raise UserError(f"The results hold no {shots}-shot rows of {source!r} -> {target!r} "
                        f"(shots present: {', '.join(map(str, available))}).", "pass one of those to --shots")
    rows = df[df.shots == shots]
    table = paper_table_for(source, target) or "table2"
    paper_avg = paper_numbers()[table]["datasets"]["Average"]
    summary = main_summary(rows)
    measured = _average(summary[(summary.source == source) & (summary.target == target)])
    findings = (_main_findings(paper_avg, measured, paper_numbers()[table]["title"].split(":")[0])
                + [_depth_finding(rows, source, target)] + _drift_findings(drift, source, target)
                + _ablation_findings(rows, source, target) + _ood_findings(rows, source))
    per_dataset = per_dataset_comparison(rows, source, target, table) if paper_table_for(source, target) else []
    return Scorecard(source, target, int(shots), table, findings, _ranking(paper_avg, measured), per_dataset)


def format_value(value: float | None, signed: bool) -> str:
    """A finding's number for display: two decimals, signed for differences and trends, '–' when missing."""
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(card: Scorecard) -> str:
    """The scorecard as Markdown: one table of findings, the ranking agreement, the per-dataset table."""
    counts = card.counts
    lines = [f"# Fidelity to the paper: {card.source} → {card.target}, {card.shots} shots", "",
             f"Compared with the paper's {card.paper_table.replace('table', 'Table ')} (averages) and its ablations. "
             f"{counts['held']} findings held, {counts['not_held']} did not, {counts['not_measured']} not measured. "
             "A difference holds when it has the paper's sign; a 'rank 1' finding when the measured rank is 1.", "",
             "| finding | from | expected | paper | measured | held |", "|---|---|---|---:|---:|---|"]
    for f in card.findings:
        signed = f.expect != "rank 1"
        held = {True: "yes", False: "**no**", None: "not measured"}[f.held]
        lines.append(f"| {f.claim} | {f.reference} | {f.expect} | {format_value(f.paper, signed)} | "
                     f"{format_value(f.measured, signed)} | {held} |")
    lines += ["", f"Kendall tau between the paper's and the measured ranking of the "
                  f"{int(card.ranking.get('methods') or 0)} paper methods measured: "
                  f"New {format_value(card.ranking.get('new'), True)}, H {format_value(card.ranking.get('H'), True)} "
                  "(the paper against itself: +1.00).", ""]
    if card.per_dataset:
        lines += ["## Per dataset: published vs measured", "",
                  "| dataset | method | Base (paper) | Base | Δ | New (paper) | New | Δ | H (paper) | H | Δ |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in card.per_dataset:
            cells = []
            for k in ("base", "new", "H"):
                cells += [f"{r[f'paper_{k}']:.2f}", f"{r[f'measured_{k}']:.2f}", f"{r[f'diff_{k}']:+.2f}"]
            lines.append(f"| {r['dataset']} | {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)



def scorecards(df: pd.DataFrame, drift: pd.DataFrame | None = None, source: str | None = None,
               target: str | None = None, shots: int | None = None) -> list[Scorecard]:
    """One scorecard per (source, target) pair of the rows (or the one pair asked for), main pair first."""
    pairs = ordered_pairs(main_summary(df))
    if source is not None:
        pairs = [p for p in pairs if p[0] == source]
    if target is not None:
        pairs = [p for p in pairs if p[1] == target]
    if source is not None and target is not None and not pairs:
        pairs = [(source, target)]  # scorecard() says what is missing
    if not pairs:
        raise UserError("The results hold no paired Base/New rows for the pair asked for.",
                        "check --source / --target against `upgradebench results show`")
    return [scorecard(df, s, t, drift, shots) for s, t in pairs]


def write_scorecards(df: pd.DataFrame, drift: pd.DataFrame | None, out: str | Path) -> Outputs:
    """``fidelity-<source>--<target>.md`` and ``.json`` for every pair of the rows, into ``out``."""
    out = Path(out)
    outputs = Outputs()

    def write() -> list[Path]:
        try:
            cards = scorecards(df, drift)
        except UserError as exc:
            raise MissingInput(exc.message) from None
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for card in cards:
            stem = out / f"fidelity-{slug(card.source, card.target)}"
            written.append(write_text(stem.with_suffix(".md"), to_markdown(card)))
            written.append(write_json(stem.with_suffix(".json"), card.as_dict()))
        return written

    outputs.attempt("fidelity", write)
    return outputs
