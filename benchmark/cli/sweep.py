"""``upgradebench sweep``: a resumable grid of runs, from a YAML grid file or from options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ..defaults import DEFAULT_SEEDS, DEFAULT_SHOTS, DEFAULT_SOURCE, DEFAULT_TARGETS
from ..errors import UserError
from ..guard import results_folder
from ._common import err_console, print_json, print_table
from ._options import DataRoot, Device, Json, Replace, Workers, plugin_output_to_stderr

if TYPE_CHECKING:
    from ..sweep import Grid

EXECUTORS = ("local", "slurm", "submitit-local")
# the defaults as the options' help shows them, computed once at import (as typer's option defaults are anyway)
_SEEDS_SHOWN = " ".join(map(str, DEFAULT_SEEDS))
_TARGETS_SHOWN = " ".join(DEFAULT_TARGETS)


def sweep(
    grid: str = typer.Option(None, "--grid", "-g",
                             help="YAML grid file, or a grid shipped with upgradebench: paper:table2, paper:table8, "
                                  "paper:table3 ... paper:table7, paper:fig2d, paper:fig4 (--dry-run lists them)."),
    method: list[str] = typer.Option(None, "--method", "-m", help="Method(s) (with --grid: only these of the grid)."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Dataset(s) (with --grid: only these)."),
    seed: list[int] = typer.Option(None, "--seed", help=f"Seed(s) (default: {_SEEDS_SHOWN})."),
    shots: list[int] = typer.Option(None, "--shots", "-k", help=f"Shots (default: {DEFAULT_SHOTS})."),
    source: str = typer.Option(None, "--source", "-s", help=f"Source model (default: {DEFAULT_SOURCE})."),
    target: list[str] = typer.Option(None, "--target", "-t", help=f"Target(s) (default: {_TARGETS_SHOWN})."),
    results: Path = typer.Option(None, "--results", "-r", parser=results_folder, metavar="PATH",
                                 help="Results folder (default: $UPGRADEBENCH_HOME/results)."),
    executor: str = typer.Option("local", "--executor",
                                 help="local | slurm (submitit) | submitit-local (submitit's jobs as local processes, "
                                      "to try a SLURM setup without a cluster)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1,
                             help="With --executor local: runs in parallel (oracle and zero-shot runs are runs of "
                                  "their own), each in its own process with its own GPU where GPUs exist (so at most "
                                  "one per GPU)."),
    wait: bool = typer.Option(False, "--wait", help="With --executor slurm: wait for the jobs and report them."),
    slurm_partition: str = typer.Option(None, "--slurm-partition", help="SLURM partition."),
    slurm_gpus: int = typer.Option(1, "--slurm-gpus", min=0, help="GPUs per SLURM job."),
    slurm_minutes: int = typer.Option(60, "--slurm-minutes", min=1, help="Time limit per SLURM job, in minutes."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs (zero-shot and oracle runs included), what "
                                                          "is missing and the estimated cost, and exit."),
    stop_on_error: bool = typer.Option(False, "--stop-on-error", help="Stop at the first failed run."),
    device: str = Device,
    data_root: Path = DataRoot,
    workers: int = Workers,
    replace: bool = Replace,
    as_json: bool = Json,
) -> None:
    """Run every (method, dataset, shots, seed, variant) of a grid, with the zero-shot run beside each (and each
    method fitted on each target with the grid's `oracle: true`); finished runs are reused (resume)."""
    from ..paths import default_results_dir
    from ..runner import Runner
    from ..sweep import Grid, check_slurm, load_grid, run_local, run_parallel, run_slurm, wait_jobs

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
    if dry_run:  # method names, config values, views, shots, seeds and models are checked, loading nothing
        _dry_run(g, data_root, as_json)
        return
    with plugin_output_to_stderr(as_json):  # a plugin's prints must not break the JSON on stdout
        specs = g.specs()
        if executor == "slurm":
            check_slurm()  # before any planning: without SLURM, submitit would run the jobs here in the background
        runner_kwargs: dict[str, Any] = {"results": results, "device": device, "data_root": data_root,
                                         "workers": workers, "replace": replace}
        # every user mistake is reported before the first fit or submission; a submitting machine may have no GPU
        serial = executor == "local" and jobs == 1
        runner = Runner(**runner_kwargs) if serial else Runner(**{**runner_kwargs, "device": "cpu"})
        plans = runner.plan(specs)
        if executor == "local":
            report = (run_parallel(plans, runner_kwargs, jobs, keep_going=not stop_on_error) if jobs > 1
                      else run_local(plans, runner, keep_going=not stop_on_error))
        else:
            slurm = {"slurm_partition": slurm_partition, "gpus_per_node": slurm_gpus, "timeout_min": slurm_minutes}
            folder = Path(results) if results is not None else default_results_dir()
            submitted = run_slurm(plans, runner_kwargs, folder / "slurm", {k: v for k, v in slurm.items() if v},
                                  cluster="local" if executor == "submitit-local" else None)
            if executor == "slurm" and not wait:
                err_console.print(f"submitted {len(submitted)} SLURM jobs, one per run (logs under "
                                  f"{escape(str(folder / 'slurm'))}); run the sweep again with --wait to wait for "
                                  "them, or later to resume", highlight=False)
                return
            report = wait_jobs(plans, submitted)
    counts = report.counts()
    done = (f"{len(report.completed)}/{report.total} runs done ({counts['fitted']} fitted, {counts['evaluated']} "
            f"evaluated from a saved module, {counts['reused']} reused with nothing written)")
    if as_json:
        print_json(report.as_dict())
    elif report.failed:
        print_table(f"sweep: {done}", ["failed run", "why"], list(report.failed.items()))
    else:
        err_console.print(f"sweep: {escape(done)}, none failed", highlight=False)
    if report.failed:
        raise typer.Exit(1)


def _dry_run(grid: Grid, data_root: Path | None, as_json: bool) -> None:
    """List the runs (the planner's, zero-shot and oracle runs included), what the grid needs that is not on this
    machine, its estimated GPU cost, and the shipped grids."""
    from ..cost import estimate  # imports the methods: only a dry run needs it
    from ..plan import plan_runs
    from ..sweep import missing_inputs, paper_grids

    with plugin_output_to_stderr(as_json):  # a plugin's prints must not break the JSON on stdout
        plans = plan_runs(grid.specs())
        runs = [plan.describe() for plan in plans]
        missing = missing_inputs(grid, data_root)
        try:
            cost = estimate(plans).as_dict()
        except UserError as exc:
            cost = {"not_estimated": exc.message}
    if as_json:
        print_json({"runs": runs, "missing": missing, "cost": cost, "paper_grids": paper_grids()})
        return
    print_table(f"{len(runs)} runs", ["run"], [[r] for r in runs])  # print_table escapes its cells
    if missing:
        print_table("missing on this machine", ["kind", "name", "problem"],
                    [[m["kind"], m["name"], m["problem"]] for m in missing])
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
