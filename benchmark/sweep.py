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
    mappers: [vocab-map, {name: retune, shots: 4}, {name: vocab-map, via: toy-eva}]   # optional: rows of role 'mapped'

The paper's own grids (Tables 2-8, Fig. 2d, Fig. 4 on the real models and datasets) ship with the package
and are named ``paper:table2``, ``paper:fig2d``, ... (:func:`paper_grids`).

A grid's requests become the complete list of runs once (:func:`upgradebench.plan.plan_runs`: the zero-shot
reference and oracle runs are runs of that list), which the dry run lists, the cost estimate prices and every
executor (local, ``--jobs N``, SLURM through submitit) runs as it is. Every run is resumed "only missing" by the
runner (its run id covers everything it depends on), and each finished run is on disk before the next starts, so
an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import sys
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
from .plan import RunPlan, RunSpec, check_seed, check_shots, parse_views
from .runner import STATUSES, Runner, outcome_text


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
    mappers: list[str | dict[str, Any]] = field(default_factory=list)

    def mapper_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The grid's mappers as (name, config overrides) pairs: a name alone, or a mapping with ``name`` and the
        mapper's config keys (and ``via``)."""
        return [(m, {}) if isinstance(m, str) else (str(m["name"]), {k: v for k, v in m.items() if k != "name"})
                for m in self.mappers]

    def size(self) -> int:
        """How many requests :meth:`specs` gives, counted without listing them."""
        per_cell = sum(1 + len(self.variants.get(method, [])) for method in self.methods)
        return len(self.datasets) * len(self.shots) * len(self.seeds) * per_cell

    def specs(self) -> list[RunSpec]:
        """Every request of the grid, in a stable order (dataset, shots, seed, method, variant); a variant's values
        stay as the grid typed them (:func:`~upgradebench.plan.make_plan` checks them against the config's types).
        A grid of more than :data:`MAX_RUNS` requests is refused before any is listed."""
        if self.size() > MAX_RUNS:
            raise UserError(f"This grid asks for {self.size()} runs, more than {MAX_RUNS}.",
                            "split it into smaller grids (fewer datasets, seeds, shots or variants per file)")
        out = []
        for dataset in self.datasets:
            for shots in self.shots:
                for seed in self.seeds:
                    for method in self.methods:
                        for variant in [{}, *self.variants.get(method, [])]:
                            out.append(RunSpec(method=method, source=self.source, targets=list(self.targets),
                                               dataset=dataset, shots=shots, seed=seed,
                                               config=dict(variant), views=self.views,
                                               ood=list(self.ood.get(dataset, [])), oracle=self.oracle,
                                               mappers=self.mapper_requests()))
        return out


PAPER_PREFIX = "paper:"
MAX_GRID_BYTES = 1 << 20
"""The largest grid file read (a grid is a few hundred bytes; ``/dev/zero`` or a huge file is refused unread)."""
MAX_RUNS = 100_000
"""The most requests one grid may expand to (the paper's largest grid has 264)."""
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
        return text, resources.files(__package__).joinpath("grids").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    path = Path(ref)
    fix = "pass --grid FILE.yaml or --grid paper:NAME"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"Grid file {path} does not exist.", fix) from None
    except OSError as exc:
        raise UserError(f"Grid file {path} cannot be read ({exc.strerror or exc}).", fix) from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"Grid {path} is a folder, not a YAML file.", fix)
    if not stat.S_ISREG(info.st_mode):  # a device or a pipe could be read forever
        raise UserError(f"Grid {path} is not a regular file (a device, pipe or socket).", fix)
    if info.st_size > MAX_GRID_BYTES:
        raise UserError(f"Grid file {path} is {info.st_size} bytes, more than a grid's {MAX_GRID_BYTES}.", fix)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_GRID_BYTES + 1)  # bounded even if the file grew since stat
        if len(data) > MAX_GRID_BYTES:
            raise UserError(f"Grid file {path} is more than a grid's {MAX_GRID_BYTES} bytes.", fix)
        return str(path), data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Grid file {path} cannot be read ({exc}).", fix) from None


def _check_types(data: dict[str, Any], where: str) -> None:
    """Refuse values of the wrong type or range (``methods: coop`` is a string, not a list; ``shots: [0]``;
    ``oracle: "false"`` is a string, not a boolean) before anything runs."""
    for key, kind in _LIST_KEYS.items():
        if key not in data:
            continue
        values = data[key]
        if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            example = "[1, 2, 3]" if kind is int else "[a, b]"
            raise UserError(f"Grid {where}: {key!r} must be a list of {kind.__name__}s, got {values!r}.",
                            f"write it as a YAML list, e.g. {key}: {example}")
        if not values:
            raise UserError(f"Grid {where} needs a non-empty {key!r} list.")
    for seed in data.get("seeds", []):
        check_seed(seed, f"Grid {where}: seeds")
    for shots in data.get("shots", []):
        check_shots(shots, f"Grid {where}: shots")
    if "source" in data and not isinstance(data["source"], str):
        raise UserError(f"Grid {where}: 'source' must be one model name, got {data['source']!r}.")
    if "oracle" in data and not isinstance(data["oracle"], bool):
        raise UserError(f"Grid {where}: 'oracle' must be true or false, got {data['oracle']!r}.",
                        "write oracle: true or oracle: false, without quotes")
    if "views" in data:
        try:
            parse_views(data["views"])
        except UserError as exc:
            raise UserError(f"Grid {where}: {exc.message}", exc.fix) from None
    for key in ("variants", "ood"):
        value = data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
            raise UserError(f"Grid {where}: {key!r} must map a name to a list, got {value!r}.",
                            "see the grid format in `upgradebench sweep --help` and upgradebench.sweep")
    for method, variants in data.get("variants", {}).items():
        if not all(isinstance(v, dict) for v in variants):
            raise UserError(f"Grid {where}: every variant of {method!r} must be a mapping of config keys, "
                            f"got {variants!r}.", f"e.g. variants: {{{method}: [{{n_ctx: 4}}]}}")
    for dataset, tests in data.get("ood", {}).items():
        if not isinstance(dataset, str) or not all(isinstance(t, str) for t in tests):
            raise UserError(f"Grid {where}: 'ood' must map a dataset name to a list of dataset names, got "
                            f"{dataset!r}: {tests!r}.", "e.g. ood: {toy-shape: [toy-shape-sketch]}")
    mappers = data.get("mappers", [])
    if not isinstance(mappers, list) or not all(
            isinstance(m, str) or (isinstance(m, dict) and isinstance(m.get("name"), str)) for m in mappers):
        raise UserError(f"Grid {where}: 'mappers' must be a list of mapper names or mappings with a 'name', got "
                        f"{mappers!r}.", "e.g. mappers: [vocab-map, {name: retune, shots: 4}]")


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
    """What a sweep did: runs completed (with what each did: :meth:`upgradebench.runner.RunOutcome.as_dict`), and
    the failures with their messages."""

    total: int
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, name: str, outcome: dict[str, Any] | None, problem: str | None) -> None:
        """One finished run: its outcome, or why it failed."""
        if problem is None:
            self.completed.append(name)
            if outcome is not None:
                self.outcomes[name] = outcome
        else:
            self.failed[name] = problem

    def counts(self) -> dict[str, int]:
        """How many completed runs were fitted, evaluated from a saved module, or reused with nothing written."""
        out = dict.fromkeys(STATUSES, 0)
        for outcome in self.outcomes.values():
            out[outcome["status"]] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``sweep --json``)."""
        return {"total": self.total, "completed": self.completed, "failed": self.failed, "outcomes": self.outcomes,
                **self.counts()}


def _failure(exc: BaseException) -> str:
    """What a sweep's failure table says of a failed run: a user error's message, else the exception's last line."""
    if isinstance(exc, UserError):
        return exc.message
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _log_end(bar: Progress, report: SweepReport, name: str) -> None:
    """Where stderr is a log file (the bar shows only at the end there), one line per finished run saying what it
    did (fitted, evaluated or reused) or why it failed."""
    if not bar.console.is_terminal:
        done = len(report.completed) + len(report.failed)
        what = (f"FAILED: {report.failed[name]}" if name in report.failed else
                f"done ({outcome_text(report.outcomes[name])})" if name in report.outcomes else "done")
        bar.console.print(f"[{done}/{report.total}] {name}: {what}", markup=False, highlight=False, soft_wrap=True)


def run_local(plans: list[RunPlan], runner: Runner, keep_going: bool = True) -> SweepReport:
    """Run the plans one after the other; with ``keep_going`` a failed run is recorded and the sweep goes on."""
    report = SweepReport(len(plans))
    with progress_bar(transient=False) as bar:
        task = bar.add_task("sweep", total=len(plans))

        def start(plan: RunPlan) -> None:
            bar.update(task, description=f"sweep: {plan.describe()}")

        def end(plan: RunPlan, outcome: Any, error: Exception | None) -> None:
            report.record(plan.describe(), None if outcome is None else outcome.as_dict(),
                          None if error is None else _failure(error))
            bar.advance(task)
            _log_end(bar, report, plan.describe())

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
    # a worker reports through its return values: what a plugin prints goes to the sweep's stderr, never into the
    # stdout that carries `sweep --json`
    sys.stdout = sys.stderr
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get()
    import torch

    torch.set_num_threads(threads)
    _WORKER["runner"] = Runner(**runner_kwargs)


JobResult = tuple[dict[str, Any] | None, str | None]
"""What a worker or a submitit job sends back of one run: (its outcome, None) or (None, why it failed)."""


def _execute(runner: Runner, plan: RunPlan) -> JobResult:
    """Execute ``plan``; exceptions become their message (those of plugins may not pickle)."""
    try:
        return runner.execute(plan).as_dict(), None
    except Exception as exc:
        return None, _failure(exc)


def _run_in_worker(plan: RunPlan) -> JobResult:
    """Run one plan in a worker of :func:`run_parallel`."""
    return _execute(_WORKER["runner"], plan)


def run_parallel(plans: list[RunPlan], runner_kwargs: dict, jobs: int, keep_going: bool = True) -> SweepReport:
    """Run the plans (of :meth:`Runner.plan`: oracle and zero-shot runs are plans of their own, so they run in
    parallel too) in ``jobs`` worker processes on this machine (``--executor local --jobs N``).

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
                outcome, problem = future.result()
            except BrokenProcessPool:
                outcome, problem = None, ("its worker process died (killed, or out of memory); "
                                          "run the sweep again to resume")
            report.record(name, outcome, problem)
            if problem is not None and not keep_going:
                pool.shutdown(cancel_futures=True)
                raise UserError(f"Run {name} failed: {problem}", "fix it and run the sweep again to resume")
            bar.advance(task)
            _log_end(bar, report, name)
    return report


def _submitit() -> Any:
    """The submitit module, or the fix when it is not installed."""
    try:
        import submitit
    except ImportError:
        raise UserError("The SLURM executor needs submitit.", "pip install 'upgradebench[slurm]'") from None
    return submitit


def check_slurm() -> None:
    """Refuse ``--executor slurm`` where submitit is missing or finds no SLURM (no ``sbatch``): submitit would
    otherwise fall back to running the jobs as local background processes."""
    try:
        cluster = _submitit().AutoExecutor.which()
    except RuntimeError:
        cluster = None
    if cluster != "slurm":
        raise UserError("--executor slurm: SLURM is not available on this machine (submitit finds no sbatch).",
                        "run the sweep on a SLURM login node, or use --executor local (add --jobs N to run in "
                        "parallel) or --executor submitit-local")


def run_slurm(plans: list[RunPlan], runner_kwargs: dict, folder: str | Path, slurm: dict[str, Any],
              cluster: str | None = None) -> list[Any]:
    """Submit one job per plan (of :meth:`Runner.plan`) through submitit (``pip install 'upgradebench[slurm]'``);
    returns the jobs.

    ``cluster``: None submits to SLURM (refused where there is none, :func:`check_slurm`), ``"local"`` runs the
    jobs as submitit's local processes.
    """
    if cluster is None:
        check_slurm()
    executor = _submitit().AutoExecutor(folder=str(folder), cluster=cluster or "slurm")
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
                outcome, problem = job.result()
            except Exception as exc:  # the job did not finish (killed, cancelled, timed out): submitit says how
                outcome = None
                problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.record(plan.describe(), outcome, problem)
            bar.advance(task)
            _log_end(bar, report, plan.describe())
    return report


def _run_one(plan: RunPlan, runner_kwargs: dict) -> JobResult:
    """One submitit job: run ``plan`` as a local sweep's worker does."""
    return _execute(Runner(**runner_kwargs), plan)
