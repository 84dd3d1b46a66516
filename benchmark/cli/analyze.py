"""``upgradebench analyze drift`` and ``upgradebench analyze depth``: why modules break (paper Fig. 2b-d);
``upgradebench analyze matrix``: the upgrade matrix of mapped modules and the drift predictors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..data import get_dataset
from ..defaults import DEFAULT_DATASET, DEFAULT_SEED, DEFAULT_SOURCE, DEFAULT_TARGETS
from ..errors import UserError
from ..guard import output_file, output_folder, results_folder
from ..paths import default_results_dir, home
from ._common import err_console, print_json, print_table, print_text
from ._options import DataRoot, Device, Download, Json, Shots, Views, parse_pairs

app = typer.Typer(help="Analyses: text-encoder drift, the CoOp depth study and the upgrade matrix.",
                  no_args_is_help=True)

Source = typer.Option(DEFAULT_SOURCE, "--source", "-s", help="Source model.")
Targets = typer.Option(list(DEFAULT_TARGETS), "--target", "-t", help="Upgraded model(s); repeatable.")
Pretrained = typer.Option(None, "--pretrained", help="Local weights MODEL=PATH; repeatable.")


@app.command("drift")
def drift(
    source: str = Source,
    target: list[str] = Targets,
    dataset: list[str] = typer.Option([DEFAULT_DATASET], "--dataset", "-d",
                                      help="Dataset(s) whose class names in their template form the prompt set."),
    out: str = typer.Option(None, "--out", "-o",
                            help="Parquet file to write (default: $UPGRADEBENCH_HOME/analysis/drift-SOURCE.parquet); "
                                 "an existing file is replaced only if it is a drift table, or with --force."),
    pretrained: list[str] = Pretrained,
    device: str = Device,
    data_root: Path = DataRoot,
    download: bool = Download,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file that is not a drift table."),
    as_json: bool = Json,
) -> None:
    """Per text-encoder layer: how much parameters and output features change from SOURCE to each TARGET."""
    import pandas as pd

    from upgradebench.analysis.drift import dataset_prompts, drift_frame, write_drift
    from upgradebench.analysis.selection import slug

    from ..models import load_vlm, resolve_device

    weights = parse_pairs(pretrained, "--pretrained")
    # a bad path or name fails before any model loads
    path = output_file(out if out is not None else str(home() / "analysis" / f"drift-{slug(source)}.parquet"),
                       "--out", force, ours=_is_drift)
    datasets = [get_dataset(d, data_root) for d in dataset]
    prompts = dataset_prompts(datasets)
    dev = resolve_device(device)
    src = load_vlm(source, weights.get(source), dev, download)
    frames = []
    for name in target:
        err_console.print(f"[bold]drift[/] {escape(source)} -> {escape(name)} on {len(prompts)} prompts",
                          highlight=False)
        frames.append(drift_frame(src, load_vlm(name, weights.get(name), dev, download), prompts, dataset))
    df = pd.concat(frames, ignore_index=True)
    path = write_drift(df, path)
    if as_json:
        print_json({"out": str(path), "rows": df.to_dict(orient="records")})
        return
    for kind, part in df.groupby("kind", sort=False):
        print_table(f"{kind} drift from {source}", ["target", "layer", "mean |change|", "relative change"],
                    [[r.target, r.layer, f"{r.mean_abs_change:.4g}", f"{r.relative_change:.4g}"]
                     for r in part.itertuples()])
    print_text(f"drift written to {path}", err=True)


@app.command("depth")
def depth(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset to train and evaluate on."),
    layers: str = typer.Option(..., "--layers", help="Depths k (context enters block k): 0,1,2 or 0-11."),
    source: str = Source,
    target: list[str] = Targets,
    seed: list[int] = typer.Option([DEFAULT_SEED], "--seed", help="Seed(s); repeatable."),
    shots: int = Shots,
    config: list[str] = typer.Option(None, "--config", "-c", help="Other CoOp config key=value; repeatable."),
    views: str = Views,
    results: Path = typer.Option(None, "--results", "-r", parser=results_folder, metavar="PATH",
                                 help="Results folder (default: $UPGRADEBENCH_HOME/results)."),
    pretrained: list[str] = Pretrained,
    device: str = Device,
    data_root: Path = DataRoot,
    as_json: bool = Json,
) -> None:
    """Train CoOp with its context inserted at block k of SOURCE's text encoder, for each k; evaluate on TARGETs."""
    from upgradebench.analysis.depth import DEPTH_KEY, depth_specs, depth_summary, parse_layers, run_depth_study
    from upgradebench.analysis.selection import zeroshot_accuracy

    from ..runner import Runner

    runner = Runner(results, device, data_root=data_root)
    specs = depth_specs(dataset, parse_layers(layers), seed, source=source, targets=list(target), shots=shots,
                        config=parse_pairs(config, "--config"), views=views,
                        pretrained=parse_pairs(pretrained, "--pretrained"))

    def announce(plan) -> None:
        what = f"coop on {dataset}, seed {plan.seed}: {source} -> {', '.join(target)}"
        err_console.print(f"[bold]depth {getattr(plan.config, DEPTH_KEY)}[/] {escape(what)}", highlight=False)

    df = run_depth_study(runner, specs, announce)
    summary = depth_summary(df)
    rows = [{"depth": int(r[DEPTH_KEY]), "target": r.target, "seeds": int(r.seeds), "Base": round(r.base, 2),
             "New": round(r.new, 2), "H": round(r.H, 2),
             "ZS target": _rounded(zeroshot_accuracy(df, dataset, r.target))}
            for _, r in summary.iterrows()]
    if as_json:
        print_json({"results": str(runner.results), "rows": rows})
        return
    cols = ["depth", "target", "seeds", "Base", "New", "H", "ZS target"]
    print_table(f"CoOp depth study on {dataset}: {source} -> {', '.join(target)}", cols,
                [[r[c] for c in cols] for r in rows])
    print_text(f"rows written under {runner.results}", err=True)


@app.command("matrix")
def matrix(
    results: list[Path] = typer.Option(None, "--results", "-r",
                                       help="Results folder(s) (default: $UPGRADEBENCH_HOME/results); repeatable."),
    out: str = typer.Option(None, "--out", "-o", help="Folder for the matrix and predictor figures (PNG and PDF)."),
    model_measures: bool = typer.Option(False, "--model-measures",
                                        help="Also load each pair's models for the token-embedding map residual and "
                                             "the text-feature CKA (the zero-shot agreement needs no model)."),
    pretrained: list[str] = Pretrained,
    device: str = Device,
    data_root: Path = DataRoot,
    download: bool = Download,
    force: bool = typer.Option(False, "--force", help="Write into an --out folder that holds other files."),
    as_json: bool = Json,
) -> None:
    """Per (method, upgrade kind, mapper): New, NFR against the source, reuse gain over the target's zero-shot,
    recovery against the oracle and the mapper's cost; then how well cheap drift measures predict the reuse gain
    (docs/metrics.md, "Upgrade matrix")."""
    from upgradebench.analysis.matrix import fig_matrix, has_mapped_rows, matrix_rows, matrix_table
    from upgradebench.analysis.predictors import fig_predictors, identity_gains, pair_measures, predictor_table

    from ..metrics import read_ledgers, read_mapped_ledgers
    from ..results import read_results
    from .results import cell, print_packed

    folders = list(results) if results else [default_results_dir()]
    folder = output_folder(out, force=force) if out is not None else None  # a wrong --out fails before reading
    rows = read_results(*folders)
    if not has_mapped_rows(rows):
        raise UserError(f"No rows of modules carried by a mapper (role 'mapped') in {', '.join(map(str, folders))}: "
                        "there is no upgrade matrix to show.",
                        "run modules onto their targets through a mapper first (docs/metrics.md, "
                        "\"Upgrade matrix\"), or pass the folder those runs wrote")
    rows = matrix_rows(rows)  # the tasks the mapped rows cover, for the matrix and the pairs' measures alike
    ledgers = read_ledgers(*folders)
    table = matrix_table(rows, ledgers, read_mapped_ledgers(*folders))
    loaded = _model_measures(rows, parse_pairs(pretrained, "--pretrained"), device, data_root, download) \
        if model_measures else None
    measures = pair_measures(rows, ledgers, loaded)
    gains = identity_gains(table)
    stats = predictor_table(measures, gains)
    written = []
    if folder is not None:
        written += fig_matrix(table, folder)
        if not stats.empty and (stats.pairs > 0).any():
            written += fig_predictors(measures, gains, stats, folder)
    if as_json:
        print_json({"results": [str(f) for f in folders], "rows": table.to_dict(orient="records"),
                    "pairs": measures.merge(gains.drop(columns="kind"), on=["source", "target"],
                                            how="left").to_dict(orient="records"),
                    "predictors": stats.to_dict(orient="records"), "written": [str(p) for p in written]})
        return
    columns = ["method · mapper\nsource -> target", "kind", "target data", "shots", "New", "NFR", "reuse gain",
               "recovery", "map s", "map shots", "seeds", "datasets"]
    print_packed("Upgrade matrix: mean over seeds and datasets [95% interval]", columns, [
        [f"{r.method} · {r.mapper}\n{r.source} -> {r.target}", r.kind, r.budget, str(r.shots),
         *(cell(getattr(r, m), getattr(r, f"{m}_lo"), getattr(r, f"{m}_hi")) for m in ("new", "nfr", "reuse_gain",
                                                                                      "recovery")),
         f"{r.map_seconds:.1f}", f"{r.mapper_shots:g}", str(r.seeds), str(r.datasets)] for r in table.itertuples()],
        lead=1, groups=[(" (metrics)", [4, 5, 6, 7]), (" (kind and cost)", [1, 2, 3, 8, 9, 10, 11])])
    print_table("Drift predictors: Spearman rho across pairs with the mean reuse gain under identity",
                ["measure", "pairs", "rho [95% interval]", "permutation p"],
                [[s.measure, s.pairs, cell(s.rho, s.rho_lo, s.rho_hi), f"{s.p:.3f}" if s.p == s.p else "–"]
                 for s in stats.itertuples()])
    for path in written:
        print_text(f"wrote {path}", err=True)


def _model_measures(rows, weights: dict[str, str], device: str, data_root: Path, download: bool):
    """The measures that load models (:func:`upgradebench.analysis.predictors.model_measures`) of every (source,
    target) pair of ``rows``, on the datasets its modules were trained on."""
    import pandas as pd

    from upgradebench.analysis.predictors import model_measures

    from ..models import load_vlm, resolve_device
    from ..roles import MAPPED, NEW

    dev = resolve_device(device)
    pairs = rows[rows.role.isin([NEW, MAPPED])][["source", "eval_model", "train_dataset"]].drop_duplicates()
    models: dict = {}

    def model(name: str):
        if name not in models:
            models[name] = load_vlm(name, weights.get(name), dev, download)
        return models[name]

    records = []
    for (source, target), part in pairs.groupby(["source", "eval_model"], sort=True):
        err_console.print(f"[bold]measures[/] {escape(source)} -> {escape(target)}", highlight=False)
        datasets = [get_dataset(d, data_root) for d in sorted(set(part.train_dataset))]
        records.append({"source": source, "target": target, **model_measures(model(source), model(target), datasets)})
    return pd.DataFrame(records, columns=["source", "target", "embedding_residual", "text_cka"])


def _is_drift(path: Path) -> bool:
    """Whether ``path`` is a drift table (``analyze drift`` wrote it, so it may be written again)."""
    from upgradebench.analysis.drift import read_drift

    try:
        read_drift(path)
    except UserError:
        return False
    return True


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
