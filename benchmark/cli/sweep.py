"""``upgradebench sweep``: a resumable grid of runs, from a YAML grid file or from options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from ..defaults import DEFAULT_SEEDS, DEFAULT_SHOTS, DEFAULT_SOURCE, DEFAULT_TARGETS
from ..errors import UserError
from ..guard import results_folder
from ._common import err_console, print_json, print_table
from ._options import DataRoot, Device, Json, Replace, Workers

if TYPE_CHECKING:
    from ..sweep import Grid

EXECUTORS = ("local", "slurm", "submitit-local")


def sweep(
    grid: str = typer.Option(None, "--grid", "-g",
                             help="YAML grid file, or a grid shipped with upgradebench: paper:table2, paper:table8, "
                                  "paper:table3 ... paper:table7, paper:fig2d, paper:fig4 (--dry-run lists them)."),
    method: list[str] = typer.Option(None, "--method", "-m", help="Method(s) (with --grid: only these of the grid)."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Dataset(s) (with --grid: only these)."),
    seed: list[int] = typer.Option(None, "--seed", help=f"Seed(s) (default: {' '.join(map(str, DEFAULT_SEEDS))})."),
    shots: list[int] = typer.Option(None, "--shots", "-k", help=f"Shots (default: {DEFAULT_SHOTS})."),
    source: str = typer.Option(None, "--source", "-s", help=f"Source model (default: {DEFAULT_SOURCE})."),
    target: list[str] = typer.Option(None, "--target", "-t", help=f"Target(s) (default: {' '.join(DEFAULT_TARGETS)})."),
    results: Path = typer.Option(None, "--results", "-r", parser=results_folder, metavar="PATH",
                                 help="Results folder (default: $UPGRADEBENCH_HOME/results)."),
    executor: str = typer.Option("local", "--executor",
                                 help="local | slurm (submitit) | submitit-local (submitit's jobs as local processes, "
                                      "to try a SLURM setup without a cluster)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1,
                             help="With --executor local: runs in parallel, each in its own process with its own GPU "
                                  "where GPUs exist (so at most one per GPU)."),
    wait: bool = typer.Option(False, "--wait", help="With --executor slurm: wait for the jobs and report them."),
    slurm_partition: str = typer.Option(None, "--slurm-partition", help="SLURM partition."),
    slurm_gpus: int = typer.Option(1, "--slurm-gpus", help="GPUs per SLURM job."),
    slurm_minutes: int = typer.Option(60, "--slurm-minutes", help="Time limit per SLURM job."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and exit."),
    stop_on_error: bool = typer.Option(False, "--stop-on-error", help="Stop at the first failed run."),
    device: str = Device,
    data_root: Path = DataRoot,
    workers: int = Workers,
    replace: bool = Replace,
    as_json: bool = Json,
) -> None:
    """Run every (method, dataset, shots, seed, variant) of a grid; finished runs are skipped (resume)."""
    from ..paths import default_results_dir
    from ..runner import Runner
    from ..plan import make_plan
    from ..sweep import Grid, load_grid, run_local, run_parallel, run_slurm, wait_jobs

    if grid is not None:
        g = load_grid(grid)
        g.methods = list(method) if method else g.methods  # run a slice of a grid
        g.datasets = list(dataset) if dataset else g.datasets
    elif method and dataset:
        g = Grid(methods=list(method), datasets=list(dataset))
    else:
        raise UserError("sweep needs --grid FILE, or --method and --dataset.")
    if grid is None or seed:
        g.seeds = list(seed) if seed else g.seeds
    g.shots = list(shots) if shots else g.shots
    g.source = source or g.source
    g.targets = list(target) if target else g.targets
    if executor not in EXECUTORS:
        raise UserError(f"Unknown executor {executor!r}.", f"use one of: {', '.join(EXECUTORS)}")
    if jobs > 1 and executor != "local":
        raise UserError(f"--jobs is for --executor local; {executor} runs one job per run.", "drop --jobs")
    specs = g.specs()
    if dry_run:  # method names, config values and views are checked here too, loading nothing
        _dry_run(g, specs, [make_plan(spec) for spec in specs], data_root, as_json)
        return
    runner_kwargs = {"results": results, "device": device, "data_root": data_root, "workers": workers, "replace": replace}
    # every user mistake is reported before the first fit or submission; a submitting machine may have no GPU
    serial = executor == "local" and jobs == 1
    runner = Runner(**runner_kwargs) if serial else Runner(**{**runner_kwargs, "device": "cpu"})
    plans = [runner.plan(spec) for spec in specs]
    if executor == "local":
        report = (run_parallel(plans, runner_kwargs, jobs, keep_going=not stop_on_error) if jobs > 1
                  else run_local(plans, runner, keep_going=not stop_on_error))
    else:
        slurm = {"slurm_partition": slurm_partition, "gpus_per_node": slurm_gpus, "timeout_min": slurm_minutes}
        folder = Path(results) if results is not None else default_results_dir()
        submitted = run_slurm(plans, runner_kwargs, folder / "slurm", {k: v for k, v in slurm.items() if v},
                              cluster="local" if executor == "submitit-local" else None)
        if executor == "slurm" and not wait:
            err_console.print(f"submitted {len(submitted)} jobs (logs under {escape(str(folder / 'slurm'))})",
                              highlight=False)
            return
        report = wait_jobs(plans, submitted)
    if as_json:
        print_json({"total": report.total, "completed": report.completed, "failed": report.failed})
    elif report.failed:
        print_table(f"sweep: {len(report.completed)}/{report.total} runs done", ["failed run", "why"],
                    list(report.failed.items()))
    else:
        err_console.print(f"sweep: {len(report.completed)}/{report.total} runs done, none failed")
    if report.failed:
        raise typer.Exit(1)


def _dry_run(grid: Grid, specs: list, plans: list, data_root: Path | None, as_json: bool) -> None:
    """List the runs, what the grid needs that is not on this machine, its estimated GPU cost, and the
    shipped grids."""
    from ..sweep import missing_inputs, paper_grids

    from ..cost import estimate  # imports the methods: only a dry run needs it

    runs = [plan.describe() for plan in plans]
    missing = missing_inputs(grid, data_root)
    try:
        cost = estimate(specs).as_dict()
    except UserError as exc:
        cost = {"not_estimated": exc.message}
    if as_json:
        print_json({"runs": runs, "missing": missing, "cost": cost, "paper_grids": paper_grids()})
        return
    print_table(f"{len(runs)} runs", ["run"], [[escape(r)] for r in runs])
    if missing:
        print_table("missing on this machine", ["kind", "name", "problem"],
                    [[m["kind"], escape(m["name"]), escape(m["problem"])] for m in missing])
    else:
        err_console.print("every model and dataset of the grid is on this machine")
    if "total_hours" in cost:
        skipped = len(cost["not_estimated"])
        err_console.print(f"estimated cost on one {escape(cost['device'])}: {cost['total_hours']:.1f} GPU-hours "
                          f"({cost['extraction_hours']:.1f} h feature extraction, "
                          f"{sum(cost['fit_hours'].values()):.1f} h fitting)"
                          + (f"; {skipped} runs not estimated (models or methods not measured)" if skipped else ""))
    else:
        err_console.print(f"no cost estimate: {escape(cost['not_estimated'])}")
