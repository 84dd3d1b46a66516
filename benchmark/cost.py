"""What a sweep costs on one GPU, estimated from throughputs measured on the real architectures.

``gpu_throughputs.json`` (made from the output of ``benchmarks/gpu_check.py``) holds, per open_clip
architecture, the image encoder's images per second and, per method, the seconds of one optimisation step
as ``a + b * classes`` (for a method without an epoch loop: its whole fit, per class). A sweep's cost is

- feature extraction, each item once however many runs share it: every (model, dataset) test split, and per
  (source, dataset, shots, seed) few-shot sample its plain training images and its validation shots, and its
  ``V`` augmented views for the methods that train on them;
- every fit: its optimisation steps (``Method.steps``: epochs x ``ceil(classes * shots / batch)`` for most
  methods, iterations for CLIP-LoRA) x seconds per step, on the architecture it is fitted on (a target's, for
  an oracle run).

It prices the list of runs the planner made (:func:`upgradebench.plan.plan_runs`), so the zero-shot and oracle
runs a sweep will execute are priced as they will run, with the configs already parsed.

Class and test-set sizes come from the dataset table (``data/coop_datasets.json``), so a grid is estimated
before its data is on disk. Runs on models, datasets or methods that were not measured are listed as not
estimated, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from .contract import Method
from .data.coop_spec import coop_specs
from .errors import UserError
from .models import parse_model
from .plan import RunPlan
from .task import ONLINE

FILE = "gpu_throughputs.json"


@lru_cache(maxsize=1)
def throughputs() -> dict[str, Any]:
    """The measured throughputs shipped with upgradebench (``{}`` before any GPU check was recorded)."""
    path = resources.files(__package__).joinpath(FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dataclass
class CostEstimate:
    """GPU-hours of a list of runs on the device the throughputs were measured on."""

    device: str
    extraction_hours: float = 0.0
    fit_hours: dict[str, float] = field(default_factory=dict)
    not_estimated: dict[str, str] = field(default_factory=dict)

    @property
    def total_hours(self) -> float:
        """Extraction plus every fit."""
        return self.extraction_hours + sum(self.fit_hours.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"device": self.device, "total_hours": self.total_hours, "extraction_hours": self.extraction_hours,
                "fit_hours": dict(self.fit_hours), "not_estimated": dict(self.not_estimated)}


def _arch(model: str, pretrained: str | None) -> str | None:
    spec = parse_model(model, pretrained)
    return spec.arch if spec.kind == "open_clip" else None


def fit_seconds(table: dict[str, Any], arch: str, method: type[Method], config: Any, dataset: str, classes: int,
                shots: int) -> float | None:
    """Seconds of one fit of ``method`` with ``config`` on ``arch`` by ``table`` (None when that pair was not
    measured)."""
    timing = table.get("archs", {}).get(arch, {}).get("fit", {}).get(method.name)
    if timing is None:
        return None
    steps = method.steps(config, dataset, classes, shots)
    if steps is None:
        return timing["fit_per_class_s"] * classes
    return steps * (timing["a"] + timing["b"] * classes)


def estimate(plans: Sequence[RunPlan], table: dict[str, Any] | None = None) -> CostEstimate:
    """The GPU-hours of ``plans`` (:func:`upgradebench.plan.plan_runs`) from measured throughputs (``table``: the
    shipped ones by default)."""
    table = throughputs() if table is None else table
    if not table:
        raise UserError("No GPU throughputs are recorded in this upgradebench, so no cost can be estimated.",
                        "run benchmarks/gpu_check.py on a GPU and record its output (see docs/performance.md)")
    archs, datasets = table["archs"], coop_specs()
    out = CostEstimate(device=table["measured"]["device"])
    extracted: set[tuple[str, str]] = set()

    def extract(arch: str, key: str, images: int) -> float:
        """Seconds to encode ``images`` on ``arch`` the first time ``key`` is asked for, then nothing."""
        if (arch, key) in extracted:
            return 0.0
        extracted.add((arch, key))
        return images / archs[arch]["images_per_s"]

    seconds = 0.0
    for plan in plans:
        name = plan.describe()
        models = [plan.source, *plan.targets]
        found = [_arch(m, plan.pretrained.get(m)) for m in models]
        unknown = [m for m, a in zip(models, found) if a not in archs]
        model_archs = [a for a in found if a is not None]  # every one of them, unless some are unknown
        missing_data = [d for d in (plan.dataset, *plan.ood) if d not in datasets]
        if unknown or missing_data or plan.views == ONLINE:
            why = (f"no throughput measured for {', '.join(unknown)}" if unknown else
                   f"no size known for {', '.join(missing_data)}" if missing_data else "online views")
            out.not_estimated[name] = why
            continue
        info = datasets[plan.dataset]
        fit = fit_seconds(table, model_archs[0], plan.method, plan.config, plan.dataset, info.num_classes, plan.shots)
        if fit is None:
            out.not_estimated[name] = f"no fit time measured for {plan.method.name} on {model_archs[0]}"
            continue
        out.fit_hours[plan.method.name] = out.fit_hours.get(plan.method.name, 0.0) + fit / 3600
        sample, key = info.num_classes * plan.shots, f"{plan.dataset}/k{plan.shots}/s{plan.seed}"
        # plain training images and validation shots once per sample; its augmented views once per view count (a
        # method without training views, as zero-shot, asks for none, whichever run of the sample comes first)
        seconds += extract(model_archs[0], f"{key}/plain", sample + info.num_classes * min(plan.shots, 4))
        if plan.views:
            seconds += extract(model_archs[0], f"{key}/views{plan.views}", sample * int(plan.views))
        for arch in model_archs:
            for test_set in (plan.dataset, *plan.ood):
                seconds += extract(arch, f"{test_set}/test", datasets[test_set].num_test)
    out.extraction_hours = seconds / 3600
    return out
