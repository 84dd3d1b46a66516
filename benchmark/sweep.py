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

Every run is resumed "only missing" by the runner (its run id covers everything it depends on), and each
finished run is on disk before the next starts, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .features import progress_bar
from .runner import DEFAULT_SOURCE, DEFAULT_TARGETS, Runner, RunSpec


@dataclass
class Grid:
    """The axes of a sweep."""

    methods: list[str]
    datasets: list[str]
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    shots: list[int] = field(default_factory=lambda: [16])
    source: str = DEFAULT_SOURCE
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    variants: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ood: dict[str, list[str]] = field(default_factory=dict)
    views: int | str = 10
    oracle: bool = False

    def specs(self) -> list[RunSpec]:
        """Every run of the grid, in a stable order (dataset, shots, seed, method, variant)."""
        out = []
        for dataset in self.datasets:
            for shots in self.shots:
                for seed in self.seeds:
                    for method in self.methods:
                        for variant in [{}, *self.variants.get(method, [])]:
                            out.append(RunSpec(method=method, source=self.source, targets=list(self.targets),
                                               dataset=dataset, shots=shots, seed=seed,
                                               config={k: str(v) for k, v in variant.items()}, views=self.views,
                                               ood=list(self.ood.get(dataset, [])), oracle=self.oracle))
        return out


def load_grid(path: str | Path) -> Grid:
    """Read a grid YAML file, with errors that name the file and the bad key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"Grid file {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise UserError(f"Grid file {path} is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"Grid file {path} must hold a mapping of grid keys.")
    known = set(Grid.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise UserError(f"Grid file {path} has unknown keys: {', '.join(sorted(unknown))}.",
                        f"valid keys: {', '.join(sorted(known))}")
    for key in ("methods", "datasets"):
        if not data.get(key):
            raise UserError(f"Grid file {path} needs a non-empty {key!r} list.")
    return Grid(**data)


@dataclass
class SweepReport:
    """What a sweep did: runs completed, and the failures with their messages."""

    total: int
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def describe(spec: RunSpec) -> str:
    """One line naming a run."""
    variant = ",".join(f"{k}={v}" for k, v in sorted(spec.config.items()))
    return f"{spec.method}{f'[{variant}]' if variant else ''} {spec.dataset} k={spec.shots} seed={spec.seed}"


def run_local(specs: list[RunSpec], runner: Runner, keep_going: bool = True) -> SweepReport:
    """Run the specs one after the other; with ``keep_going`` a failed run is recorded and the sweep goes on."""
    for spec in specs:  # every user mistake is reported before the first fit
        runner.validate(spec)
    report = SweepReport(len(specs))
    with progress_bar(transient=False) as bar:
        task = bar.add_task("sweep", total=len(specs))
        for spec in specs:
            bar.update(task, description=f"sweep: {describe(spec)}")
            try:
                runner.run(spec)
                report.completed.append(describe(spec))
            except UserError as exc:
                if not keep_going:
                    raise
                report.failed[describe(spec)] = exc.message
            except Exception as exc:  # a bug in one method must not lose the rest of the sweep
                if not keep_going:
                    raise
                report.failed[describe(spec)] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            bar.advance(task)
    return report


def run_slurm(specs: list[RunSpec], runner_kwargs: dict, folder: str | Path, slurm: dict[str, Any]) -> list[Any]:
    """Submit one SLURM job per run through submitit (``pip install upgradebench[slurm]``); returns the jobs."""
    try:
        import submitit
    except ImportError:
        raise UserError("The SLURM executor needs submitit.", "pip install 'upgradebench[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder))
    executor.update_parameters(**slurm)
    with executor.batch():
        jobs = [executor.submit(_run_one, spec, runner_kwargs) for spec in specs]
    return jobs


def _run_one(spec: RunSpec, runner_kwargs: dict) -> int:
    return len(Runner(**runner_kwargs).run(spec))
