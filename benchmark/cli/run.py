"""``upgradebench run`` and ``upgradebench eval``: fit on the source, evaluate on source and targets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from ..defaults import DEFAULT_DATASET, DEFAULT_SEED, DEFAULT_SOURCE, DEFAULT_TARGETS
from ..guard import results_folder
from ._common import err_console, print_json, print_table, print_text
from ._options import (
    DataRoot,
    Device,
    Download,
    Json,
    Mappers,
    Precision,
    Replace,
    Shots,
    Views,
    Workers,
    parse_mappers,
    parse_pairs,
    plugin_output_to_stderr,
)

if TYPE_CHECKING:
    from ..plan import MapperPlan


def run(
    method: str = typer.Option(..., "--method", "-m", help="Method name (see `upgradebench methods list`)."),
    source: str = typer.Option(DEFAULT_SOURCE, "--source", "-s", help="Model the module is fitted on."),
    target: list[str] = typer.Option(list(DEFAULT_TARGETS), "--target", "-t", help="Upgraded model(s); repeatable."),
    dataset: list[str] = typer.Option([DEFAULT_DATASET], "--dataset", "-d", help="Dataset(s); repeatable."),
    shots: int = Shots,
    seed: list[int] = typer.Option([DEFAULT_SEED], "--seed", help="Seed(s); repeatable."),
    config: list[str] = typer.Option(None, "--config", "-c", help="Method config override key=value; repeatable."),
    views: str = Views,
    ood: list[str] = typer.Option(None, "--ood", help="Extra test-only dataset(s) with the same classes, or a "
                                  "subset of them that records its labels, as ImageNet-A/-R (OOD)."),
    results: Path = typer.Option(None, "--results", "-r", parser=results_folder, metavar="PATH",
                                 help="Results folder (default: $UPGRADEBENCH_HOME/results)."),
    pretrained: list[str] = typer.Option(None, "--pretrained",
                                         help="Local weights: MODEL=PATH (or PATH alone for the source); repeatable."),
    precision: str = Precision,
    oracle: bool = typer.Option(False, "--oracle", help="Also fit the method on each target (role 'oracle', the "
                                "ceiling of the recovery ratio): one more fit per target."),
    mapper: list[str] = Mappers,
    device: str = Device,
    data_root: Path = DataRoot,
    download: bool = Download,
    workers: int = Workers,
    replace: bool = Replace,
    as_json: bool = Json,
) -> None:
    """Fit METHOD once on SOURCE and evaluate the module unchanged on SOURCE (Base) and each TARGET (New); with
    --mapper, also carried to each TARGET by that mapper (rows of role 'mapped')."""
    from ..errors import UserError
    from ..plan import make_mapper_plans
    from ..roles import IDENTITY, MAPPED, NEW, ORACLE
    from ..runner import Runner, RunSpec, count_rows, outcome_text

    weights = {}
    for item in pretrained or []:
        weights.update(parse_pairs([item], "--pretrained") if "=" in item else {source: item})
    specs = [RunSpec(method=method, source=source, targets=list(target), dataset=d, shots=shots, seed=s,
                     config=parse_pairs(config, "--config"), views=views, ood=list(ood or []), pretrained=weights,
                     oracle=oracle, mappers=parse_mappers(mapper))
             for d in dataset for s in seed]

    def announce(plan) -> None:
        models = f"fitted on {plan.source}" if plan.role == ORACLE else f"{plan.source} -> {', '.join(plan.targets)}"
        what = f"{plan.method.name}{' (oracle)' if plan.role == ORACLE else ''} on {plan.dataset}, {plan.shots} " \
               f"shots, seed {plan.seed}: {models}"
        err_console.print(f"[bold]run[/] {escape(what)}", highlight=False)

    def report(plan, outcome, error) -> None:
        if outcome is not None:
            print_text(f"  {outcome_text(outcome.as_dict())}: {outcome.folder}", err=True)

    with plugin_output_to_stderr(as_json):  # a plugin's prints must not break the JSON on stdout
        runner = Runner(results, device, precision, data_root, download, workers, replace=replace)
        plans = runner.plan(specs)  # every mistake is reported before the first fit
        outcomes = runner.run_all(plans, announce, report)
    import pandas as pd

    df = pd.concat([outcome.rows for outcome in outcomes], ignore_index=True)
    refused = [note for outcome in outcomes for note in outcome.refused]
    for note in dict.fromkeys(refused):
        print_text(f"refused: {note}", err=True)
    asked = [(name, settings) for name, settings in parse_mappers(mapper) if name != IDENTITY]
    labels = {name + (":" + ",".join(f"{k}={v}" for k, v in settings.items()) if settings else ""): plan
              for (name, settings), plan in zip(asked, make_mapper_plans(asked))}
    rows = _summary_rows(df, method, source, list(target), labels)
    written = sum(outcome.written for outcome in outcomes)
    fitted = sum(outcome.fitted for outcome in outcomes)
    said = (f"{len(outcomes)} runs ({fitted} fitted, {len(outcomes) - fitted} with a saved module): "
            + (f"{count_rows(written)} written under {runner.results}" if written else
               f"nothing written, every row was already under {runner.results}"))
    if as_json:
        print_text(said, err=True)
        print_json({"results": str(runner.results), "runs": [outcome.as_dict() for outcome in outcomes],
                    "rows_written": written, "rows": rows})
        return
    cols = ["dataset", "seed", "Base"] + [c for t in target for c in (f"New {t}", f"H {t}")] + \
           [f"ZS {m}" for m in [source, *target]]
    cells = [[f"{r[c]:.2f}" if isinstance(r.get(c), float) else r.get(c, "") for c in cols] for r in rows]
    print_table(f"{method}: {source} -> {', '.join(target)}", cols, cells)
    if labels:  # one row per (dataset, seed, target, mapper): a column each would not fit a terminal
        print_table(f"{method} carried by mappers (top-1 on the target)", ["dataset", "seed", "target", "mapper",
                                                                           "top-1"],
                    [[r["dataset"], r["seed"], t, m, f"{r[f'{m} {t}']:.2f}" if r[f"{m} {t}"] is not None
                      else "refused"] for r in rows for t in target for m in labels])
    print_text(said, err=True)
    if not df[df.method == method].role.isin([NEW, MAPPED]).any():
        raise UserError(f"No target row: every way asked to carry {method} to {', '.join(target)} was refused.",
                        "pass --mapper with a mapper that supports it (upgradebench mappers list)")


def _summary_rows(df, method: str, source: str, targets: list[str], mappers: dict[str, MapperPlan]) -> list[dict]:
    import numpy as np

    from ..results import harmonic
    from ..roles import BASE, MAPPED, NEW, ZERO_SHOT

    out = []
    mine = df[df.method == method]
    zs = df[df.method == ZERO_SHOT]
    for (dataset, seed), g in mine.groupby(["dataset", "seed"], sort=False):
        base = float(g[g.role == BASE].top1.iloc[0])
        row = {"dataset": dataset, "seed": int(seed), "Base": round(base, 2)}
        for t in targets:
            new_rows = g[(g.eval_model == t) & (g.role == NEW) & (g.dataset == dataset)].top1
            new = float(new_rows.iloc[0]) if len(new_rows) else None  # None: identity refused it (a width change)
            row[f"New {t}"] = round(new, 2) if new is not None else None
            row[f"H {t}"] = round(harmonic(base, new), 2) if new is not None else None
            for label, plan in mappers.items():
                mapped = g[(g.eval_model == t) & (g.role == MAPPED) & (g.mapper == plan.name) & (g.dataset == dataset)]
                mapped = mapped.top1[np.array([plan.matches(c) for c in mapped.mapper_config], dtype=bool)]
                row[f"{label} {t}"] = round(float(mapped.iloc[0]), 2) if len(mapped) else None
        for m in [source, *targets]:
            z = zs[(zs.dataset == dataset) & (zs.eval_model == m)]
            row[f"ZS {m}"] = round(float(z.top1.iloc[0]), 2) if len(z) else None
        out.append(row)
    return out


def evaluate(
    module: Path = typer.Option(..., "--module", help="A saved module folder (RESULTS/<run_id>/module)."),
    model: str = typer.Option(..., "--model", help="Model to plug the module into."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset whose test split is evaluated."),
    pretrained: str = typer.Option(None, "--pretrained", help="Local weights file for --model."),
    mapper: str = typer.Option(None, "--mapper", metavar="NAME[:key=value,...]",
                               help="Carry the module to --model with this mapper (default: identity, unchanged)."),
    source: str = typer.Option(None, "--source", "-s", help="With --mapper: the model the module was fitted on "
                               "(default: the source its run's rows name)."),
    device: str = Device,
    data_root: Path = DataRoot,
    workers: int = Workers,
    as_json: bool = Json,
) -> None:
    """Evaluate a saved module on any compatible model, without retraining (or carried there by --mapper)."""
    from ..runner import evaluate_module

    ((name, settings),) = parse_mappers([mapper or "identity"])
    with plugin_output_to_stderr(as_json):  # a plugin's prints must not break the JSON on stdout
        out = evaluate_module(module, model, dataset, device, data_root, pretrained, workers, name, settings, source)
    if as_json:
        print_json(out)
        return
    # one record: a field per line, so that the module's path never squeezes the numbers
    print_table("evaluation", ["field", "value"],
                [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in out.items()])
