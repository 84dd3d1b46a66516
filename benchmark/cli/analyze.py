"""``upgradebench analyze drift`` and ``upgradebench analyze depth``: why modules break (paper Fig. 2b-d)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..data import get_dataset
from ..defaults import DEFAULT_DATASET, DEFAULT_SEED, DEFAULT_SOURCE, DEFAULT_TARGETS
from ..errors import UserError
from ..guard import output_file, results_folder
from ..paths import home
from ._common import err_console, print_json, print_table, print_text
from ._options import DataRoot, Device, Download, Json, Shots, Views, parse_pairs

app = typer.Typer(help="Analyses: text-encoder drift and the CoOp depth study.", no_args_is_help=True)

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
