"""Sweeps: grids of methods x datasets x seeds (x shots x config variants), resumable, local or on SLURM.

A grid is a YAML file (or the same keys given on the command line)::

    source: toy-clip
    targets: [toy-eva, toy-eva-drift]
    methods: [zeroshot, coop, contcoop]
    datasets: [toy-shape, toy-pattern]
    seeds: [1, 2, 3]
    shots: [16]
    variants:                  # optional: extra config variants per method (the default config always runs)
      contcoop: [{attention: false}, {kd: false}, {n_ctx: 4}]
    ood: {toy-shape: [toy-shape-sketch, toy-shape-bg]}   # optional extra test-only datasets per dataset
    oracle: false              # optional: also fit each method on each target (rows of role 'oracle')

The paper's own grids (Tables 2-8, Fig. 2d, Fig. 4 on the real models and datasets) ship with the package
and are named ``paper:table2``, ``paper:fig2d``, ... (:func:`paper_grids`).

Every run is resumed "only missing" by the runner (its run id covers everything it depends on), and each
finished run is on disk before the next starts, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.progress import Progress

from .data import dataset_problem
from .defaults import DEFAULT_SEEDS, DEFAULT_SHOTS, DEFAULT_SOURCE, DEFAULT_TARGETS, DEFAULT_VIEWS
from .errors import UserError
from .features import progress_bar
from .models import resolve_device, weights_problem
from .plan import RunPlan, RunSpec
from .runner import Runner


@dataclass
class Grid:
    """The axes of a sweep."""

    methods: list[str]
    datasets: list[str]
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    shots: list[int] = field(default_factory=lambda: [DEFAULT_SHOTS])
    source: str = DEFAULT_SOURCE
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    variants: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ood: dict[str, list[str]] = field(default_factory=dict)
    views: int | str = DEFAULT_VIEWS
    oracle: bool = False

    def specs(self) -> list[RunSpec]:
        """Every run of the grid, in a stable order (dataset, shots, seed, method, variant); a variant's values
        stay as the grid typed them (:func:`~upgradebench.plan.make_plan` checks them against the config's types)."""
        out = []
        for dataset in self.datasets:
            for shots in self.shots:
                for seed in self.seeds:
                    for method in self.methods:
                        for variant in [{}, *self.variants.get(method, [])]:
                            out.append(RunSpec(method=method, source=self.source, targets=list(self.targets),
                                               dataset=dataset, shots=shots, seed=seed,
                                               config=dict(variant), views=self.views,
                                               ood=list(self.ood.get(dataset, [])), oracle=self.oracle))
        return out


PAPER_PREFIX = "paper:"
# key -> (type the grid file must give, what to say) for the keys whose values are checked before anything runs
_LIST_KEYS = {"methods": str, "datasets": str, "targets": str, "seeds": int, "shots": int}


def paper_grids() -> dict[str, str]:
    """The grids shipped with upgradebench (``--grid paper:NAME``): name -> their first comment line."""
    folder = resources.files(__package__).joinpath("grids")
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text(encoding="utf-8").splitlines()[0]
            out[entry.name[: -len(".yaml")]] = first.lstrip("# ").strip()
    return out


def _grid_text(ref: str | Path) -> tuple[str, str]:
    """(where, YAML text) of a grid file or of a shipped ``paper:NAME`` grid."""
    text = str(ref)
    if text.startswith(PAPER_PREFIX):
        name = text[len(PAPER_PREFIX):]
        known = paper_grids()
        if name not in known:
            raise UserError(f"No shipped grid named {name!r}.",
                            f"use one of: {', '.join(PAPER_PREFIX + n for n in known)}")
        return text, resources.files(__package__).joinpath("grids", f"{name}.yaml").read_text(encoding="utf-8")
    path = Path(ref)
    if path.is_dir():
        raise UserError(f"Grid {path} is a folder, not a YAML file.", "pass --grid FILE.yaml or --grid paper:NAME")
    try:
        return str(path), path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"Grid file {path} does not exist.", "pass --grid FILE.yaml or --grid paper:NAME") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Grid file {path} cannot be read ({exc}).") from None


def _check_types(data: dict[str, Any], where: str) -> None:
    """Refuse values of the wrong type (``methods: coop`` is a string, not a list) before anything runs."""
    for key, kind in _LIST_KEYS.items():
        if key not in data:
            continue
        values = data[key]
        if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            example = "[1, 2, 3]" if kind is int else "[a, b]"
            raise UserError(f"Grid {where}: {key!r} must be a list of {kind.__name__}s, got {values!r}.",
                            f"write it as a YAML list, e.g. {key}: {example}")
    if "source" in data and not isinstance(data["source"], str):
        raise UserError(f"Grid {where}: 'source' must be one model name, got {data['source']!r}.")
    for key in ("variants", "ood"):
        value = data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
            raise UserError(f"Grid {where}: {key!r} must map a name to a list, got {value!r}.",
                            "see the grid format in `upgradebench sweep --help` and upgradebench.sweep")
    for method, variants in data.get("variants", {}).items():
        if not all(isinstance(v, dict) for v in variants):
            raise UserError(f"Grid {where}: every variant of {method!r} must be a mapping of config keys, "
                            f"got {variants!r}.", f"e.g. variants: {{{method}: [{{n_ctx: 4}}]}}")


def load_grid(ref: str | Path) -> Grid:
    """Read a grid YAML file (or a shipped ``paper:NAME`` grid), with errors that name the file and the bad key."""
    where, text = _grid_text(ref)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"Grid {where} is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"Grid {where} must hold a mapping of grid keys.")
    known = set(Grid.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise UserError(f"Grid {where} has unknown keys: {', '.join(sorted(unknown))}.",
                        f"valid keys: {', '.join(sorted(known))}")
    for key in ("methods", "datasets"):
        if not data.get(key):
            raise UserError(f"Grid {where} needs a non-empty {key!r} list.")
    _check_types(data, where)
    return Grid(**data)


def missing_inputs(grid: Grid, data_root: str | Path | None = None) -> list[dict[str, str]]:
    """What a grid needs that is not on this machine: model weights and datasets, each with the reason."""
    out = []
    for model in dict.fromkeys([grid.source, *grid.targets]):
        problem = weights_problem(model)
        if problem:
            out.append({"kind": "model", "name": model, "problem": problem})
    datasets = [*grid.datasets, *(d for ood in grid.ood.values() for d in ood)]
    for name in dict.fromkeys(datasets):
        problem = dataset_problem(name, data_root)
        if problem:
            out.append({"kind": "dataset", "name": name, "problem": problem})
    return out


@dataclass
class SweepReport:
    """What a sweep did: runs completed, and the failures with their messages."""

    total: int
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _failure(exc: BaseException) -> str:
    """What a sweep's failure table says of a failed run: a user error's message, else the exception's last line."""
    if isinstance(exc, UserError):
        return exc.message
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _log_end(bar: Progress, done: int, total: int, name: str, problem: str | None) -> None:
    """Where stderr is a log file (the bar shows only at the end there), one line per finished run."""
    if not bar.console.is_terminal:
        bar.console.print(f"[{done}/{total}] {name}: " + ("done" if problem is None else f"FAILED: {problem}"),
                          markup=False, highlight=False, soft_wrap=True)


def run_local(plans: list[RunPlan], runner: Runner, keep_going: bool = True) -> SweepReport:
    """Run the plans one after the other; with ``keep_going`` a failed run is recorded and the sweep goes on."""
    report = SweepReport(len(plans))
    with progress_bar(transient=False) as bar:
        task = bar.add_task("sweep", total=len(plans))

        def start(plan: RunPlan) -> None:
            bar.update(task, description=f"sweep: {plan.describe()}")

        def end(plan: RunPlan, error: Exception | None) -> None:
            if error is None:
                report.completed.append(plan.describe())
            else:
                report.failed[plan.describe()] = _failure(error)
            bar.advance(task)
            _log_end(bar, len(report.completed) + len(report.failed), len(plans), plan.describe(),
                     None if error is None else _failure(error))

        runner.run_all(plans, start, end, keep_going=keep_going)
    return report


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to jobs: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


_WORKER: dict[str, Runner] = {}


def _exit_with_parent(parent: int) -> None:
    """End this worker when the sweep that started it is gone (killed with -9, it cannot end its workers, which
    would go on writing into the results folder, or wait forever)."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _start_worker(gpus: Any, runner_kwargs: dict, threads: int) -> None:
    """Set up one worker process of :func:`run_parallel`: its own GPU (before torch touches CUDA) and runner."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get()
    import torch

    torch.set_num_threads(threads)
    _WORKER["runner"] = Runner(**runner_kwargs)


def _run_in_worker(plan: RunPlan) -> str | None:
    """Run one plan in a worker; None when done, else why it failed (exceptions of plugins may not pickle)."""
    try:
        _WORKER["runner"].run(plan)
    except Exception as exc:
        return _failure(exc)
    return None


def run_parallel(plans: list[RunPlan], runner_kwargs: dict, jobs: int, keep_going: bool = True) -> SweepReport:
    """Run the plans (validated by :meth:`Runner.plan`) in ``jobs`` worker processes on this machine
    (``--executor local --jobs N``).

    Where GPUs exist each worker is given one of them (``CUDA_VISIBLE_DEVICES``), so there must be at least
    ``jobs`` of them; on CPU the cores are shared out. Every finished run is on disk as in a serial sweep, so a
    killed sweep (or a killed worker, reported as its runs' failure) resumes by running it again.
    """
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: CUDA is not fork-safe
    gpus = visible_gpus() if resolve_device(runner_kwargs.get("device", "auto")).type == "cuda" else []
    queue = None
    if gpus:
        if len(gpus) < jobs:
            raise UserError(f"--jobs {jobs} needs one GPU per job, but {len(gpus)} are visible ({', '.join(gpus)}).",
                            f"pass --jobs {len(gpus)} or fewer, or --device cpu")
        queue = ctx.Queue()
        for gpu in gpus[:jobs]:
            queue.put(gpu)
        runner_kwargs = {**runner_kwargs, "device": "cuda"}  # each worker sees its one GPU as cuda:0
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    report = SweepReport(len(plans))
    with progress_bar(transient=False) as bar, \
            ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_start_worker,
                                initargs=(queue, runner_kwargs, threads)) as pool:
        task = bar.add_task(f"sweep ({jobs} jobs)", total=len(plans))
        futures = {pool.submit(_run_in_worker, plan): plan.describe() for plan in plans}
        for future in as_completed(futures):
            name = futures[future]
            try:
                problem = future.result()
            except BrokenProcessPool:
                problem = "its worker process died (killed, or out of memory); run the sweep again to resume"
            if problem is None:
                report.completed.append(name)
            else:
                report.failed[name] = problem
                if not keep_going:
                    pool.shutdown(cancel_futures=True)
                    raise UserError(f"Run {name} failed: {problem}", "fix it and run the sweep again to resume")
            bar.advance(task)
            _log_end(bar, len(report.completed) + len(report.failed), len(plans), name, problem)
    return report


def run_slurm(plans: list[RunPlan], runner_kwargs: dict, folder: str | Path, slurm: dict[str, Any],
              cluster: str | None = None) -> list[Any]:
    """Submit one job per plan (validated by :meth:`Runner.plan`) through submitit
    (``pip install 'upgradebench[slurm]'``); returns the jobs.

    ``cluster`` is submitit's: None picks SLURM where it exists, ``"local"`` runs the jobs as local processes.
    """
    try:
        import submitit
    except ImportError:
        raise UserError("The SLURM executor needs submitit.", "pip install 'upgradebench[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**slurm)
    with executor.batch():
        jobs = [executor.submit(_run_one, plan, runner_kwargs) for plan in plans]
    return jobs


def wait_jobs(plans: list[RunPlan], jobs: list[Any]) -> SweepReport:
    """Wait for the submitit jobs of :func:`run_slurm` and report them as a sweep: a run that failed is reported
    with its error, a job that was killed or cancelled with submitit's account (the rows of the others are on disk)."""
    report = SweepReport(len(plans))
    with progress_bar(transient=False) as bar:
        task = bar.add_task("sweep (submitit)", total=len(plans))
        for plan, job in zip(plans, jobs):
            try:
                problem = job.result()
            except Exception as exc:  # the job did not finish (killed, cancelled, timed out): submitit says how
                problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if problem is None:
                report.completed.append(plan.describe())
            else:
                report.failed[plan.describe()] = problem
            bar.advance(task)
    return report


def _run_one(plan: RunPlan, runner_kwargs: dict) -> str | None:
    """One submitit job: run ``plan``; None when done, else why it failed (as the local executor reports it)."""
    try:
        Runner(**runner_kwargs).run(plan)
    except Exception as exc:
        return _failure(exc)
    return None
