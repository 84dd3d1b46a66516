"""The planner: what a run asks for (:class:`RunSpec`) becomes the complete list of typed runs (:class:`RunPlan`).

:func:`plan_runs` is the one place where requests become runs, for ``upgradebench run``, sweeps (local, ``--jobs``,
SLURM), ``sweep --dry-run``, the cost estimate and the depth study. It lists every run explicitly: each request's
own run, its oracle runs (role :data:`~upgradebench.roles.ORACLE`, one per target, with ``oracle``) and its
zero-shot reference run (:data:`~upgradebench.roles.ZERO_SHOT`), a run asked for twice once. Everything
that needs no data (method, config, views, shots, seed, models) is checked for every request before any dataset
is read; given the datasets, the training and OOD datasets are checked and the shots capped to what a dataset
gives. The runner (:mod:`upgradebench.runner`) then only executes plans: it never adds, caps or parses anything.

A plan also names its run: :meth:`RunPlan.identify` gives, from the fingerprints the loaded models and datasets
report, its identity (everything the run's module depends on) and its run id (the folder it lives in).
Planning loads no model, so a sweep's dry run can plan a whole grid.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .contract import Method
from .data import Dataset, class_columns
from .data.fewshot import effective_shots
from .defaults import DEFAULT_DATASET, DEFAULT_SEED, DEFAULT_SHOTS, DEFAULT_SOURCE, DEFAULT_TARGETS, DEFAULT_VIEWS
from .discovery import get_mapper, get_method
from .errors import UserError
from .guard import safe_name
from .models import parse_model
from .provenance import stable_hash
from .roles import BASE, ORACLE, ZERO_SHOT
from .task import ONLINE

MAX_SEED = 2**63 - 1
"""The largest seed: torch and numpy seed their generators with 64 bits (and numpy refuses negative seeds)."""


@dataclass
class RunSpec:
    """Everything one ``upgradebench run`` asks for, as given: ``config`` holds ``--config key=value`` strings
    or a grid's typed values (both are parsed to the method's config types by :func:`make_plan`). Where it runs
    (device, precision, results folder, data root) is the :class:`~upgradebench.runner.Runner`'s.
    ``zeroshot_reference`` plans the zero-shot run beside it, ``oracle`` a run fitted on each target. ``mappers``:
    mapper name -> its config overrides (``key=value`` strings or typed values; the key ``via`` names a model to
    map through, step by step), each applied to every target besides the module unchanged (``identity``)."""

    method: str
    source: str = DEFAULT_SOURCE
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    dataset: str = DEFAULT_DATASET
    shots: int = DEFAULT_SHOTS
    seed: int = DEFAULT_SEED
    config: dict[str, Any] = field(default_factory=dict)
    views: int | str = DEFAULT_VIEWS
    ood: list[str] = field(default_factory=list)
    pretrained: dict[str, str] = field(default_factory=dict)
    zeroshot_reference: bool = True
    oracle: bool = False
    mappers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


VIA = "via"
"""The key of a mapper request that names a model to map through (source -> via -> target, one step each)."""


RECORDED_ONLY = ("version", "resolved_start")
"""Keys a row's ``mapper_config`` adds to the mapper's config: its version, and the start mapper a mapper that
starts from another one (retune) resolved."""


@dataclass(frozen=True)
class MapperPlan:
    """One mapper a run applies to each target: its registered name, its parsed config as JSON (sorted keys) and
    the model it maps through (``via``; empty for a direct map)."""

    name: str
    config: str
    via: str = ""

    def matches(self, recorded: str) -> bool:
        """Whether a row's ``mapper_config`` (config, version, resolved start and via, as :meth:`Runner._map
        <upgradebench.runner.Runner>` records it) is this plan's."""
        values = json.loads(recorded)
        via = values.pop(VIA, "")
        for key in RECORDED_ONLY:
            values.pop(key, None)
        return bool(values == json.loads(self.config) and via == self.via)

    def label(self) -> str:
        """The row files' suffix for this mapper: ``<name>-<hash of version, config and via>``."""
        return _label(self.name, get_mapper(self.name).version, self.config, self.via)


def _label(name: str, version: str, config: str, via: str) -> str:
    return f"{safe_name(name)}-{stable_hash([name, version, config, via], 6)}"


def mapper_label(mapper: str, recorded: str) -> str:
    """The file-name suffix (``<model>--<dataset>@<label>``) of a row of ``mapper`` whose ``mapper_config`` is
    ``recorded``: what :meth:`MapperPlan.label` gave when the row was written (its version as recorded)."""
    values = json.loads(recorded)
    via, version = values.pop(VIA, ""), str(values.pop("version", ""))
    for key in RECORDED_ONLY:
        values.pop(key, None)
    return _label(mapper, version, json.dumps(values, sort_keys=True), via)


def make_mapper_plans(requests: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[MapperPlan, ...]:
    """Mapper requests ((name, config overrides with ``via``) pairs) checked and parsed: unknown mappers, config
    keys and values out of range are errors here, before anything runs. A request given twice is planned once."""
    out: list[MapperPlan] = []
    for name, overrides in requests:
        cls = get_mapper(name)
        values = dict(overrides or {})
        via = str(values.pop(VIA, "") or "")
        if via:
            parse_model(via)
        config = cls.make_config(values)
        plan = MapperPlan(name, json.dumps(cls.config_dict(config), sort_keys=True), via)
        if plan not in out:
            out.append(plan)
    return tuple(out)


@dataclass(frozen=True)
class RunPlan:
    """One run, validated and typed: the method class, its parsed config, the models and datasets by name,
    the number of cached views (an int, or ``online``; 0 for a method that uses no training views) and the
    shots the dataset can give. ``role`` is :data:`~upgradebench.roles.BASE` (fitted on the source, evaluated on
    the source and each target) or :data:`~upgradebench.roles.ORACLE` (fitted on a target, evaluated there)."""

    method: type[Method]
    config: Any
    source: str
    targets: tuple[str, ...]
    dataset: str
    shots: int
    seed: int
    views: int | str
    ood: tuple[str, ...] = ()
    pretrained: Mapping[str, str] = field(default_factory=dict)
    role: str = BASE
    mappers: tuple[MapperPlan, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        # a plan crosses into worker processes (--jobs, submitit) with its method as the registered name: the
        # class's ``name`` is set by get_method in the process that looked it up, not in one that unpickles it
        return {**self.__dict__, "method": self.method.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in {**state, "method": get_method(state["method"])}.items():
            object.__setattr__(self, key, value)

    def variant(self) -> str:
        """``k=v,...`` of the config fields that differ from the method's defaults."""
        default = dataclasses.asdict(self.method.default_config())
        current = dataclasses.asdict(self.config)
        return ",".join(f"{k}={current[k]}" for k in sorted(current) if current[k] != default.get(k))

    def describe(self) -> str:
        """One line naming the run (progress output, a sweep's report); an oracle run says the model it is fitted on."""
        variant = self.variant()
        name = f"{self.method.name}{f'[{variant}]' if variant else ''} {self.dataset} k={self.shots} seed={self.seed}"
        return f"{name} {ORACLE} on {self.source}" if self.role == ORACLE else name

    def identify(self, dataset_fingerprint: str, dataset_name: str, source_fingerprint: str,
                 precision: str) -> tuple[dict[str, Any], str]:
        """(identity, run id) of this run, given what the loaded dataset and source model report.

        The identity is everything the run's module depends on (a run whose identity is unchanged is not fitted
        again); the run id, the run's folder name, is readable parts (``dataset_name``: the name the loaded
        dataset reports) then the hash of the identity."""
        identity = {"method": self.method.name, "version": self.method.version,
                    "config": self.method.config_dict(self.config), "dataset": dataset_fingerprint,
                    "shots": self.shots, "seed": self.seed, "source": source_fingerprint, "views": self.views,
                    "precision": precision}
        if self.role == ORACLE:  # only oracles add the key, so every other run id stays what it was
            identity["role"] = self.role
        variant = self.variant()
        run_id = "-".join(filter(None, [safe_name(self.method.name), stable_hash(variant, 6) if variant else "",
                                        safe_name(dataset_name), f"k{self.shots}", f"s{self.seed}",
                                        safe_name(self.source), ORACLE if self.role == ORACLE else "",
                                        stable_hash(identity, 10)]))
        return identity, run_id

    def key(self) -> tuple:
        """What makes two plans the same run (hashable), whatever models and OOD sets it is evaluated on: a run
        asked for twice is planned once."""
        return (self.method.name, json.dumps(self.method.config_dict(self.config), sort_keys=True, default=str),
                self.source, self.dataset, self.shots, self.seed, str(self.views),
                tuple(sorted(self.pretrained.items())), self.role)

    def also_evaluated_as(self, other: RunPlan) -> RunPlan:
        """This run, evaluated also on the targets and OOD sets of ``other`` (the same run asked for again)."""
        return dataclasses.replace(self, targets=tuple(dict.fromkeys(self.targets + other.targets)),
                                   ood=tuple(dict.fromkeys(self.ood + other.ood)),
                                   mappers=tuple(dict.fromkeys(self.mappers + other.mappers)))


def parse_views(value: object) -> int | str:
    """``--views`` (or a grid's ``views``): a positive number of cached views or ``online``."""
    if value == ONLINE:
        return ONLINE
    views = 0
    if isinstance(value, str) and value.strip().isdigit():
        views = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        views = value
    if views < 1:
        raise UserError(f"--views must be a positive number or 'online', got {value!r}.",
                        "pass --views N (or views: N in a grid) with N >= 1, or online")
    return views


def check_seed(seed: object, what: str = "--seed") -> int:
    """A seed as an int from 0 to :data:`MAX_SEED`, else an error naming ``what`` (the option or grid key)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} {seed!r} is not a valid seed: a seed is a whole number from 0 to {MAX_SEED} "
                        "(torch and numpy seed with 64 bits).", f"pass {what} with a seed in that range, e.g. 1")
    return seed


def check_shots(shots: object, what: str = "--shots") -> int:
    """Shots as a positive int, else an error naming ``what`` (the option or grid key)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise UserError(f"{what} must be at least 1 training image per class, got {shots!r}.",
                        f"pass {what} with a whole number >= 1, e.g. 16")
    return shots


def _check_models(spec: RunSpec) -> None:
    """The source and the targets: names that parse, at least one target, none twice, the source not among them."""
    if isinstance(spec.targets, str) or not spec.targets:
        raise UserError(f"Run of {spec.method} on {spec.dataset} has no target model.",
                        "pass --target MODEL (or targets: [MODEL] in a grid): the upgraded model(s) to evaluate on")
    if spec.source in spec.targets:
        raise UserError(f"{spec.source!r} is both the source and a target.",
                        "drop it from the targets (--target, or the grid's targets)")
    twice = sorted({t for t in spec.targets if list(spec.targets).count(t) > 1})
    if twice:
        raise UserError(f"Target {', '.join(map(repr, twice))} is given more than once.",
                        "give each target once (--target, or the grid's targets)")
    for name in [spec.source, *spec.targets]:
        parse_model(name, spec.pretrained.get(name))


def make_plan(spec: RunSpec) -> RunPlan:
    """The plan of ``spec``'s own run as far as it needs no data: method, typed config, views, shots, seed and
    models are checked (unknown methods, config values of the wrong type or range, bad views, shots or seeds, a
    source that is also a target are refused here). Shots are as asked: :func:`plan_runs` caps them to what a
    dataset gives and adds the oracle and zero-shot runs."""
    method = get_method(spec.method)
    config = method.make_config(spec.config)
    views = parse_views(spec.views)
    _check_models(spec)
    return RunPlan(method=method, config=config, source=spec.source, targets=tuple(spec.targets),
                   dataset=spec.dataset, shots=check_shots(spec.shots), seed=check_seed(spec.seed),
                   views=views if method.uses_train_views else 0, ood=tuple(spec.ood), pretrained=dict(spec.pretrained),
                   mappers=make_mapper_plans(spec.mappers))


def _with_data(plan: RunPlan, datasets: Callable[[str], Dataset]) -> RunPlan:
    """``plan`` checked against its datasets: an OOD test set of other classes would give chance-level rows, and
    the shots are capped to the largest class of the training split."""
    train = datasets(plan.dataset)
    for name in plan.ood:
        class_columns(train.classnames, datasets(name), train.name)
    return dataclasses.replace(plan, shots=effective_shots(train, plan.shots))


def _oracles(plan: RunPlan) -> list[RunPlan]:
    """The same method and config fitted on each target and evaluated there."""
    if plan.method.name == ZERO_SHOT:  # zero-shot fits nothing: its oracle would be its New row
        return []
    return [dataclasses.replace(plan, source=target, targets=(), ood=(), role=ORACLE, mappers=())
            for target in plan.targets]


def _zeroshot(plan: RunPlan) -> RunPlan:
    """The zero-shot run of the same models, dataset, shots and seed."""
    zeroshot = get_method(ZERO_SHOT)
    return dataclasses.replace(plan, method=zeroshot, config=zeroshot.make_config({}),
                               views=plan.views if zeroshot.uses_train_views else 0, mappers=())


def plan_runs(specs: Iterable[RunSpec], datasets: Callable[[str], Dataset] | None = None) -> list[RunPlan]:
    """Every run ``specs`` ask for, in the order they run: each request's own run, then its oracle runs (with
    ``oracle``), then its zero-shot reference run (with ``zeroshot_reference``); a run asked for twice (the
    zero-shot reference of every method of a sweep, or a run of two grids with other targets) is listed once, at
    its first place, evaluated on every target and OOD set it was asked for with.

    Every request is checked as far as it needs no data (:func:`make_plan`) before any dataset is read. With
    ``datasets`` (name -> :class:`~upgradebench.data.Dataset`, e.g. :meth:`upgradebench.runner.Runner.dataset`)
    the training and OOD datasets are checked and the shots capped to what each dataset gives; without it (a dry
    run, which reads no data) the shots are as asked.
    """
    asked = [(spec, make_plan(spec)) for spec in specs]
    out: dict[tuple, RunPlan] = {}
    for spec, plan in asked:
        if datasets is not None:
            plan = _with_data(plan, datasets)
        runs = [plan, *(_oracles(plan) if spec.oracle else [])]
        if spec.zeroshot_reference and plan.method.name != ZERO_SHOT:
            runs.append(_zeroshot(plan))
        for run in runs:
            kept = out.get(run.key())
            out[run.key()] = run if kept is None else kept.also_evaluated_as(run)
    return list(out.values())
