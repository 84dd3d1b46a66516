"""What a run asks for (:class:`RunSpec`) and the validated, typed plan it becomes (:class:`RunPlan`).

The CLI, sweeps and the depth study turn their requests into plans once, before anything slow happens
(:func:`make_plan` checks what needs no data; :meth:`upgradebench.runner.Runner.plan` adds what needs the
datasets and the results folder), and the runner runs plans without parsing anything again. A plan also
names its run: :meth:`RunPlan.identity` is everything the run's module depends on and :meth:`RunPlan.run_id`
the folder it lives in, given the fingerprints the loaded models and datasets report.
Planning loads no model and no dataset, so a sweep's dry run can plan a whole grid.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .defaults import DEFAULT_DATASET, DEFAULT_SEED, DEFAULT_SHOTS, DEFAULT_SOURCE, DEFAULT_TARGETS, DEFAULT_VIEWS
from .errors import UserError
from .contract import Method
from .discovery import get_method
from .provenance import stable_hash
from .task import ONLINE


@dataclass
class RunSpec:
    """Everything one ``upgradebench run`` asks for, as given: ``config`` holds ``--config key=value`` strings
    or a grid's typed values (both are parsed to the method's config types by :func:`make_plan`). Where it runs
    (device, precision, results folder, data root) is the :class:`~upgradebench.runner.Runner`'s."""

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


@dataclass(frozen=True)
class RunPlan:
    """One run, validated and typed: the method class, its parsed config, the models and datasets by name,
    the number of cached views (an int, or ``online``; 0 for a method that uses no training views) and the
    shots the dataset can give. ``role`` is ``base`` (fitted on the source) or ``oracle`` (fitted on a target)."""

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
    oracle: bool = False
    zeroshot_reference: bool = True
    role: str = "base"

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
        """One line naming the run (progress output, a sweep's report)."""
        variant = self.variant()
        return f"{self.method.name}{f'[{variant}]' if variant else ''} {self.dataset} k={self.shots} seed={self.seed}"

    def identity(self, dataset_fingerprint: str, source_fingerprint: str, precision: str) -> dict[str, Any]:
        """Everything the run's module depends on; a run whose identity is unchanged is not fitted again."""
        identity = {"method": self.method.name, "version": self.method.version,
                    "config": self.method.config_dict(self.config), "dataset": dataset_fingerprint,
                    "shots": self.shots, "seed": self.seed, "source": source_fingerprint, "views": self.views,
                    "precision": precision}
        if self.role == "oracle":  # only oracles add the key, so every other run id stays what it was
            identity["role"] = self.role
        return identity

    def run_id(self, identity: dict[str, Any], dataset_name: str) -> str:
        """The run's folder name: readable parts (``dataset_name``: the name the loaded dataset reports), then
        the hash of its :meth:`identity`."""
        variant = self.variant()
        return "-".join(filter(None, [safe_name(self.method.name), stable_hash(variant, 6) if variant else "",
                                      safe_name(dataset_name), f"k{self.shots}", f"s{self.seed}",
                                      safe_name(self.source), "oracle" if self.role == "oracle" else "",
                                      stable_hash(identity, 10)]))

    def oracles(self) -> list[RunPlan]:
        """The same method and config fitted on each target and evaluated there (``--oracle``)."""
        if not self.oracle or self.method.name == "zeroshot":
            return []
        return [dataclasses.replace(self, source=target, targets=(), ood=(), oracle=False, zeroshot_reference=False,
                                    role="oracle") for target in self.targets]

    def zeroshot(self) -> RunPlan | None:
        """The zero-shot run whose rows every run writes beside its own (``zeroshot_reference``)."""
        if not self.zeroshot_reference or self.method.name == "zeroshot":
            return None
        zeroshot = get_method("zeroshot")
        return dataclasses.replace(self, method=zeroshot, config=zeroshot.make_config({}), oracle=False,
                                   zeroshot_reference=False, views=self.views if zeroshot.uses_train_views else 0)


def safe_name(name: str) -> str:
    """A model or dataset name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def parse_views(value: str | int) -> int | str:
    """``--views``: a positive number of cached views or ``online``."""
    if str(value) == ONLINE:
        return ONLINE
    try:
        views = int(value)
    except ValueError:
        views = 0
    if views < 1:
        raise UserError(f"--views must be a positive number or 'online', got {value!r}.")
    return views


def make_plan(spec: RunSpec) -> RunPlan:
    """The plan of ``spec`` as far as it needs no data: method, typed config, views (unknown methods, config
    values of the wrong type or range and bad views are refused here). Shots are as asked; the runner's
    :meth:`~upgradebench.runner.Runner.plan` checks models and datasets and caps shots to what a dataset gives."""
    method = get_method(spec.method)
    config = method.make_config(spec.config)
    views = parse_views(spec.views)
    return RunPlan(method=method, config=config, source=spec.source, targets=tuple(spec.targets),
                   dataset=spec.dataset, shots=spec.shots, seed=spec.seed,
                   views=views if method.uses_train_views else 0, ood=tuple(spec.ood),
                   pretrained=dict(spec.pretrained), oracle=spec.oracle, zeroshot_reference=spec.zeroshot_reference)
